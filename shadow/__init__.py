"""Shadow traffic: which statements are shadow (test) traffic, and where their shadows live.

``shadow.rules`` parses and validates a logical database's ``shadow`` and ``mirror``
sections; ``shadow.decide`` tells shadow from production traffic for a parsed statement;
``shadow.rewrite`` turns a statement (or a sharded route unit) into its shadow; and
``shadow.provision`` creates the shadow tables. The session glue is
``dbmesh/frontend/shadow.py``; read mirroring is ``dbmesh/mirror.py``.
"""
