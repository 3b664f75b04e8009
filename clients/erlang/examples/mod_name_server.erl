%% mod_name_server: the name server of Programming Erlang's lib_chan chapter, exactly
%% in the book's style: it knows only {chan, MM, X} and {chan_closed, MM}, and answers
%% with MM ! {send, X}.
%%
%% Behind lib_chan-rs it runs as a port program with lib_chan_port (see
%% name_server.escript):
%%
%%   erl -noinput -pa DIR -run lib_chan_port main mod_name_server start_me_up
%%
%% Clients may cast ({send, X}) as the book's client does, or call. As calls, by
%% lib_chan_port's call window, {store, K, V} (which sends nothing back) replies true
%% and {lookup, K} replies {ok, V} or undefined, as PROTOCOL.md section 7 promises;
%% anything else, which this loop does not receive, gets {error, Ref, {bad_request, X}}.

-module(mod_name_server).
-export([start_me_up/3]).

start_me_up(MM, _ArgsC, _ArgsS) ->
    loop(MM).

loop(MM) ->
    receive
        {chan, MM, {store, K, V}} ->
            kvs:store(K, V),
            loop(MM);
        {chan, MM, {lookup, K}} ->
            MM ! {send, kvs:lookup(K)},
            loop(MM);
        {chan_closed, MM} ->
            true
    end.
