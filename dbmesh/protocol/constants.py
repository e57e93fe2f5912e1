"""MySQL client/server protocol constants used by the sidecar (both directions).

Plain int class attributes, not enum.IntFlag/IntEnum: flag arithmetic and comparisons run
per packet on the hot path, and enum arithmetic builds a new enum member each time (it
showed up in profiles). The classes are only namespaces. Final: the compiled modules
(dbmesh/native.py) read them as constants, not as attribute lookups.
"""

from typing import Final


class Capability:
    LONG_PASSWORD: Final = 1
    FOUND_ROWS: Final = 1 << 1
    LONG_FLAG: Final = 1 << 2
    CONNECT_WITH_DB: Final = 1 << 3
    NO_SCHEMA: Final = 1 << 4
    COMPRESS: Final = 1 << 5
    ODBC: Final = 1 << 6
    LOCAL_FILES: Final = 1 << 7
    IGNORE_SPACE: Final = 1 << 8
    PROTOCOL_41: Final = 1 << 9
    INTERACTIVE: Final = 1 << 10
    SSL: Final = 1 << 11
    IGNORE_SIGPIPE: Final = 1 << 12
    TRANSACTIONS: Final = 1 << 13
    RESERVED: Final = 1 << 14
    SECURE_CONNECTION: Final = 1 << 15
    MULTI_STATEMENTS: Final = 1 << 16
    MULTI_RESULTS: Final = 1 << 17
    PS_MULTI_RESULTS: Final = 1 << 18
    PLUGIN_AUTH: Final = 1 << 19
    CONNECT_ATTRS: Final = 1 << 20
    PLUGIN_AUTH_LENENC_CLIENT_DATA: Final = 1 << 21
    CAN_HANDLE_EXPIRED_PASSWORDS: Final = 1 << 22
    SESSION_TRACK: Final = 1 << 23
    DEPRECATE_EOF: Final = 1 << 24


# What the sidecar offers clients. Not offered: COMPRESS, LOCAL_FILES (LOAD DATA LOCAL would
# let a backend read client files through us), SESSION_TRACK (we do not forward tracker data).
SERVER_CAPABILITIES: Final = (
    Capability.LONG_PASSWORD | Capability.FOUND_ROWS | Capability.LONG_FLAG
    | Capability.CONNECT_WITH_DB | Capability.NO_SCHEMA | Capability.ODBC | Capability.IGNORE_SPACE
    | Capability.PROTOCOL_41 | Capability.INTERACTIVE | Capability.IGNORE_SIGPIPE
    | Capability.TRANSACTIONS | Capability.SECURE_CONNECTION | Capability.MULTI_STATEMENTS
    | Capability.MULTI_RESULTS | Capability.PS_MULTI_RESULTS | Capability.PLUGIN_AUTH
    | Capability.CONNECT_ATTRS | Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA
    | Capability.CAN_HANDLE_EXPIRED_PASSWORDS | Capability.DEPRECATE_EOF
)

# Client flags that change the shape or meaning of what a server sends back. A backend
# connection is only reused for a client that negotiated the same subset, so result
# packets can be relayed byte for byte.
RESULT_SHAPING_CAPABILITIES: Final = (
    Capability.FOUND_ROWS | Capability.DEPRECATE_EOF | Capability.MULTI_STATEMENTS
    | Capability.MULTI_RESULTS | Capability.PS_MULTI_RESULTS | Capability.LONG_FLAG
)


class ServerStatus:
    IN_TRANS: Final = 0x0001
    AUTOCOMMIT: Final = 0x0002
    MORE_RESULTS_EXISTS: Final = 0x0008
    NO_GOOD_INDEX_USED: Final = 0x0010
    NO_INDEX_USED: Final = 0x0020
    CURSOR_EXISTS: Final = 0x0040
    LAST_ROW_SENT: Final = 0x0080
    DB_DROPPED: Final = 0x0100
    NO_BACKSLASH_ESCAPES: Final = 0x0200
    METADATA_CHANGED: Final = 0x0400
    QUERY_WAS_SLOW: Final = 0x0800
    PS_OUT_PARAMS: Final = 0x1000
    IN_TRANS_READONLY: Final = 0x2000
    SESSION_STATE_CHANGED: Final = 0x4000


class Command:
    SLEEP: Final = 0x00
    QUIT: Final = 0x01
    INIT_DB: Final = 0x02
    QUERY: Final = 0x03
    FIELD_LIST: Final = 0x04
    CREATE_DB: Final = 0x05
    DROP_DB: Final = 0x06
    REFRESH: Final = 0x07
    SHUTDOWN: Final = 0x08
    STATISTICS: Final = 0x09
    PROCESS_INFO: Final = 0x0A
    CONNECT: Final = 0x0B
    PROCESS_KILL: Final = 0x0C
    DEBUG: Final = 0x0D
    PING: Final = 0x0E
    TIME: Final = 0x0F
    DELAYED_INSERT: Final = 0x10
    CHANGE_USER: Final = 0x11
    BINLOG_DUMP: Final = 0x12
    TABLE_DUMP: Final = 0x13
    CONNECT_OUT: Final = 0x14
    REGISTER_SLAVE: Final = 0x15
    STMT_PREPARE: Final = 0x16
    STMT_EXECUTE: Final = 0x17
    STMT_SEND_LONG_DATA: Final = 0x18
    STMT_CLOSE: Final = 0x19
    STMT_RESET: Final = 0x1A
    SET_OPTION: Final = 0x1B
    STMT_FETCH: Final = 0x1C
    DAEMON: Final = 0x1D
    BINLOG_DUMP_GTID: Final = 0x1E
    RESET_CONNECTION: Final = 0x1F


class FieldType:
    DECIMAL: Final = 0x00
    TINY: Final = 0x01
    SHORT: Final = 0x02
    LONG: Final = 0x03
    FLOAT: Final = 0x04
    DOUBLE: Final = 0x05
    NULL: Final = 0x06
    TIMESTAMP: Final = 0x07
    LONGLONG: Final = 0x08
    INT24: Final = 0x09
    DATE: Final = 0x0A
    TIME: Final = 0x0B
    DATETIME: Final = 0x0C
    YEAR: Final = 0x0D
    NEWDATE: Final = 0x0E
    VARCHAR: Final = 0x0F
    BIT: Final = 0x10
    JSON: Final = 0xF5
    NEWDECIMAL: Final = 0xF6
    ENUM: Final = 0xF7
    SET: Final = 0xF8
    TINY_BLOB: Final = 0xF9
    MEDIUM_BLOB: Final = 0xFA
    LONG_BLOB: Final = 0xFB
    BLOB: Final = 0xFC
    VAR_STRING: Final = 0xFD
    STRING: Final = 0xFE
    GEOMETRY: Final = 0xFF


class FieldFlag:
    NOT_NULL: Final = 1
    PRI_KEY: Final = 2
    UNIQUE_KEY: Final = 4
    MULTIPLE_KEY: Final = 8
    BLOB: Final = 16
    UNSIGNED: Final = 32
    ZEROFILL: Final = 64
    BINARY: Final = 128
    ENUM: Final = 256
    AUTO_INCREMENT: Final = 512
    TIMESTAMP: Final = 1024
    SET: Final = 2048
    NUM: Final = 32768


# Header bytes of response packets.
OK_HEADER: Final = 0x00
EOF_HEADER: Final = 0xFE
ERR_HEADER: Final = 0xFF
LOCAL_INFILE_HEADER: Final = 0xFB

MAX_PACKET: Final = 0xFFFFFF  # payloads this long continue in the next packet

# Character set / collation ids the sidecar needs by name.
COLLATION_UTF8MB4_GENERAL_CI: Final = 45
COLLATION_BINARY: Final = 63
