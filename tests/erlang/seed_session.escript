#!/usr/bin/env escript
%% The book's seed session, and 100 pipelined calls, against a lib_chan-rs server,
%% using nothing but Erlang's ssl, {packet, 4} and term_to_binary/binary_to_term.
%%
%% Usage: escript seed_session.escript HOST PORT CA_FILE
%% Prints one line per step; any mismatch crashes the script (non-zero exit).
-mode(compile).

main([Host, PortS, CaFile]) ->
    Port = list_to_integer(PortS),
    {ok, _} = application:ensure_all_started(ssl),
    Opts = [binary, {packet, 4}, {active, false},
            {verify, verify_peer}, {cacertfile, CaFile},
            {server_name_indication, Host},
            {versions, ['tlsv1.3']}],
    {ok, S} = ssl:connect(Host, Port, Opts, 10000),
    ok = send(S, {start_service, nameServer, <<"ABXy45">>, ""}),
    %% binary_to_term(_, [safe]) only accepts atoms this node knows: the welcome's keys
    %% are literals in this module, so they are.
    {ok, #{protocol := 1, max_frame := MaxFrame, server := Server}} = recv(S),
    io:format("welcome: protocol 1, max_frame ~b, server ~s~n", [MaxFrame, Server]),
    ok = send(S, {send, {store, joe, "writing a book"}}),
    ok = send(S, {call, 1, {lookup, joe}}),
    {reply, 1, {ok, "writing a book"}} = recv(S),
    ok = send(S, {call, 2, {lookup, jim}}),
    {reply, 2, undefined} = recv(S),
    io:format("seed session ok~n"),
    N = 100,
    [ok = send(S, {call, 100 + I, {lookup, joe}}) || I <- lists:seq(1, N)],
    Replies = [recv(S) || _ <- lists:seq(1, N)],
    Refs = lists:sort([R || {reply, R, {ok, "writing a book"}} <- Replies]),
    Refs = lists:seq(101, 100 + N),
    io:format("~b pipelined calls ok~n", [N]),
    ok = send(S, close),
    ssl:close(S),
    halt(0);
main(_) ->
    io:format(standard_error, "usage: seed_session.escript HOST PORT CA_FILE~n", []),
    halt(2).

send(S, Term) -> ssl:send(S, term_to_binary(Term)).

recv(S) ->
    {ok, Bin} = ssl:recv(S, 0, 10000),
    binary_to_term(Bin, [safe]).
