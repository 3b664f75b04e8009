#!/usr/bin/env escript
%%! -noinput
%% A port program that dies as soon as it starts.
main(_) -> halt(3).
