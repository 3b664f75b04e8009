#!/usr/bin/env python3
"""The book's name server (``mod_name_server``) as a lib_chan port program.

PROTOCOL.md section 7, first table, plus ``delete`` and ``names`` from the second:

=======================  ===================================  ==========================
request                  as a call, the reply                 as a send
=======================  ===================================  ==========================
``{store, Key, Value}``  ``true``                             stored, nothing sent back
``{lookup, Key}``        ``{ok, Value}`` or ``undefined``     the answer comes back as
                                                              ``{send, Answer}``
``{delete, Key}``        ``true``                             deleted, nothing sent back
``names``                the keys, in Erlang term order       ``{send, Keys}``
anything else            ``{error, Ref, {bad_request, X}}``   ignored, with a log line
=======================  ===================================  ==========================

Keys and values are any terms; two keys are the same key when they are the same term
(Erlang's ``=:=``: ``"joe"`` and ``[106, 111, 101]`` are one key, ``1`` and ``1.0`` two),
which :class:`lib_chan.etf.Frozen` gives us. One program serves every connection, so
the names are shared by all the service's clients, as the book's ``kvs`` is. They live
in memory: gone when the program stops.

Run by the server (``handler = "port"``), or by hand to see the frames:
``python3 examples/name_server.py < frames``.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from lib_chan.etf import A, Frozen, term_order_key  # noqa: E402
from lib_chan.port import CallError, Service  # noqa: E402

svc = Service("name_server")

#: Frozen(Key) -> (Key, Value)
names: dict = {}


def is_request(t, tag, n):
    return isinstance(t, tuple) and len(t) == n and t[0] == A(tag)


def answer(key):
    entry = names.get(Frozen(key))
    return (A.ok, entry[1]) if entry is not None else A.undefined


def all_names():
    return sorted((k for k, _ in names.values()), key=term_order_key)


@svc.on_hello
def hello(args_s):
    svc.log.info("started with ArgsS %r", args_s)


@svc.on_call
def call(conn, request):
    if is_request(request, "store", 3):
        names[Frozen(request[1])] = (request[1], request[2])
        return True
    if is_request(request, "lookup", 2):
        return answer(request[1])
    if is_request(request, "delete", 2):
        names.pop(Frozen(request[1]), None)
        return True
    if request == A.names:
        return all_names()
    raise CallError((A.bad_request, request))


@svc.on_cast
def cast(conn, message):
    if is_request(message, "store", 3):
        names[Frozen(message[1])] = (message[1], message[2])
    elif is_request(message, "lookup", 2):
        conn.send(answer(message[1]))
    elif is_request(message, "delete", 2):
        names.pop(Frozen(message[1]), None)
    elif message == A.names:
        conn.send(all_names())
    else:
        svc.log.info("conn %d sent %r, which the name server does not understand; ignored",
                     conn.id, message)


if __name__ == "__main__":
    svc.run()
