"""ConnectionClosed, in a module of its own: the modules compiled with mypyc cannot define a
subclass of ConnectionError (see dbmesh/native.py); packets.py re-exports it."""


class ConnectionClosed(ConnectionError):
    """The peer closed the connection (cleanly or mid-packet)."""
