"""Errors the sidecar reports to clients as MySQL error packets.

Codes are the server's own where one fits, so drivers map them to the right exception
classes; messages say what to fix and name the data source, table or rule at fault.
"""

from __future__ import annotations

from .protocol.packets import err_packet


class ProxyError(Exception):
    """An error to send to the client as an ERR packet."""

    def __init__(self, code: int, sqlstate: str, message: str):
        super().__init__(message)
        self.code = code
        self.sqlstate = sqlstate
        self.message = message

    def packet(self) -> bytes:
        return err_packet(self.code, self.sqlstate, self.message)


ER_CON_COUNT_ERROR = 1040
ER_HANDSHAKE_ERROR = 1043
ER_DBACCESS_DENIED_ERROR = 1044
ER_ACCESS_DENIED_ERROR = 1045
ER_NO_DB_ERROR = 1046
ER_UNKNOWN_COM_ERROR = 1047
ER_BAD_DB_ERROR = 1049
ER_UNKNOWN_ERROR = 1105
ER_TABLEACCESS_DENIED_ERROR = 1142
ER_COLUMNACCESS_DENIED_ERROR = 1143
ER_SPECIFIC_ACCESS_DENIED_ERROR = 1227
ER_NOT_SUPPORTED_YET = 1235
ER_UNKNOWN_STMT_HANDLER = 1243
ER_NOT_SUPPORTED_AUTH_MODE = 1251
ER_MALFORMED_PACKET = 1835
# "The server behind the proxy is unreachable / went away": the codes MariaDB itself sends
# when the remote server of a FEDERATED/Spider table fails. Never a client-library code
# (2000-2999, CR_*): those only exist on the client side, and libmariadb (the mariadb CLI,
# Connector/C 3.3.9+, CONC-648) rejects an ERR packet carrying one as a malformed packet.
ER_CONNECT_TO_FOREIGN_DATA_SOURCE = 1429
ER_QUERY_ON_FOREIGN_DATA_SOURCE = 1430
# SQLSTATE class 08 (connection exception): drivers that classify by SQLSTATE (Connector/Python,
# Connector/J) raise their connection-error class, as for a server that went away.
SQLSTATE_LINK_FAILURE = "08S01"


def access_denied(user: str, host: str, using_password: bool) -> ProxyError:
    return ProxyError(ER_ACCESS_DENIED_ERROR, "28000",
                      f"Access denied for user '{user}'@'{host}' (using password: "
                      f"{'YES' if using_password else 'NO'})")


def db_access_denied(user: str, host: str, database: str) -> ProxyError:
    return ProxyError(ER_DBACCESS_DENIED_ERROR, "42000",
                      f"Access denied for user '{user}'@'{host}' to database '{database}'")


def unknown_database(database: str) -> ProxyError:
    return ProxyError(ER_BAD_DB_ERROR, "42000", f"Unknown database '{database}'")


def backend_unavailable(data_source: str, address: str, reason: str) -> ProxyError:
    return ProxyError(ER_CONNECT_TO_FOREIGN_DATA_SOURCE, SQLSTATE_LINK_FAILURE,
                      f"Can't connect to data source '{data_source}' ({address}): {reason}")


def backend_lost(data_source: str, address: str) -> ProxyError:
    return ProxyError(ER_QUERY_ON_FOREIGN_DATA_SOURCE, SQLSTATE_LINK_FAILURE,
                      f"Lost connection to data source '{data_source}' ({address}) during query")


def malformed(what: str) -> ProxyError:
    return ProxyError(ER_MALFORMED_PACKET, "HY000", f"Malformed communication packet: {what}")
