"""lib_chan for Python: a client of lib_chan channel servers, and port programs.

- :mod:`lib_chan.etf`: Erlang External Term Format (PROTOCOL.md section 3), frames;
- :mod:`lib_chan.client`: :func:`~lib_chan.client.connect` and the ``Channel``;
- :mod:`lib_chan.port`: ``Service``, for writing a service as a port program (section 9).

Standard library only (Ed25519 key logins use ``cryptography`` when it is installed).
"""

__version__ = "0.1.0"
