#!/usr/bin/env escript
%%! -noinput
%% A port program that answers its first call with a frame that is no term.
main(_) ->
    Port = open_port({fd, 0, 1}, [{packet, 4}, binary, eof]),
    loop(Port).
loop(Port) ->
    receive
        {Port, {data, B}} ->
            case binary_to_term(B) of
                {call, _, _, _} -> port_command(Port, <<"this is not a term">>);
                _ -> ok
            end,
            loop(Port);
        {Port, eof} -> halt(0)
    end.
