#!/usr/bin/env escript
%% -*- erlang -*-
%%! -noinput
%%
%% chat.escript: IRC Lite, the book's chat (mod_chat, in this
%% directory), as a port program of lib_chan-rs, run by ../lib_chan_port.erl:
%%
%%   [[service]]
%%   name = "chat"
%%   handler = "port"
%%   command = ["escript", "clients/erlang/examples/chat.escript"]
%%
%% It compiles the two modules from their sources next to it, in memory, at every
%% start (nothing to build, no stale .beam), then runs
%% lib_chan_port:main(["mod_chat", "start" | Args]): arguments given to
%% the script are lib_chan_port's options (e.g. new_atoms=0). "-noinput" above is
%% required (see lib_chan_port.erl).

main(Args) ->
    Here = filename:dirname(filename:absname(escript:script_name())),
    load(filename:join([Here, "..", "lib_chan_port.erl"])),
    load(filename:join(Here, "mod_chat.erl")),
    lib_chan_port:main(["mod_chat", "start" | Args]).

%% Compiles File and loads it; errors go to standard error (standard output is the
%% protocol).
load(File) ->
    case compile:file(File, [binary, return_errors]) of
        {ok, Mod, Bin} ->
            {module, Mod} = code:load_binary(Mod, File, Bin);
        {error, Errors, _Warnings} ->
            io:format(standard_error, "chat.escript: cannot compile ~ts: ~tp~n",
                      [File, Errors]),
            erlang:halt(2)
    end.
