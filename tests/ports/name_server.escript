#!/usr/bin/env escript
%%! -noinput
%% A port program (PROTOCOL.md section 9) for the tests: the book's name server, plus
%% calls that misbehave on purpose: {crash} halts mid-call, {slow, Ms, X} answers X after
%% Ms, {flood, N} pushes N messages, {close} closes the channel. With PID_FILE set it
%% writes its OS pid there, and on `eof` (its input closed) it appends "stopped".
main(_) ->
    Port = open_port({fd, 0, 1}, [{packet, 4}, binary, eof]),
    case os:getenv("PID_FILE") of
        false -> ok;
        File -> file:write_file(File, os:getpid())
    end,
    loop(Port, #{}).

out(Port, T) -> port_command(Port, term_to_binary(T)).

loop(Port, Names) ->
    receive
        {Port, {data, B}} ->
            loop(Port, handle(Port, binary_to_term(B), Names));
        {Port, eof} ->
            case os:getenv("PID_FILE") of
                false -> ok;
                File -> file:write_file(File, "stopped", [append])
            end,
            halt(0);
        {answer, Conn, Ref, X} ->
            out(Port, {reply, Conn, Ref, X}),
            loop(Port, Names)
    end.

handle(_Port, {hello, 2, _ArgsS}, Names) -> Names;
handle(_Port, {open, _Conn, _ArgsC, _Info}, Names) -> Names;
handle(_Port, {closed, _Conn}, Names) -> Names;
handle(_Port, {chan, _Conn, {store, K, V}}, Names) -> Names#{K => V};
handle(Port, {chan, Conn, {lookup, K}}, Names) ->
    out(Port, {send, Conn, lookup(K, Names)}), Names;
handle(Port, {call, Conn, Ref, {store, K, V}}, Names) ->
    out(Port, {reply, Conn, Ref, true}), Names#{K => V};
handle(Port, {call, Conn, Ref, {lookup, K}}, Names) ->
    out(Port, {reply, Conn, Ref, lookup(K, Names)}), Names;
handle(_Port, {call, _Conn, _Ref, {crash}}, _Names) ->
    halt(1);
handle(_Port, {call, Conn, Ref, {slow, Ms, X}}, Names) ->
    erlang:send_after(Ms, self(), {answer, Conn, Ref, X}), Names;
handle(Port, {call, Conn, Ref, {flood, N}}, Names) ->
    [out(Port, {send, Conn, {push, I}}) || I <- lists:seq(1, N)],
    out(Port, {reply, Conn, Ref, flooded}), Names;
handle(Port, {call, Conn, Ref, {whoami}}, Names) ->
    out(Port, {reply, Conn, Ref, Conn}), Names;
handle(Port, {call, Conn, _Ref, {close}}, Names) ->
    out(Port, {close, Conn}), Names;
handle(Port, {call, Conn, Ref, Other}, Names) ->
    out(Port, {error, Conn, Ref, {bad_request, Other}}), Names.

lookup(K, Names) ->
    case Names of
        #{K := V} -> {ok, V};
        _ -> undefined
    end.
