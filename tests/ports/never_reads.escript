#!/usr/bin/env escript
%%! -noinput
%% A port program that never reads its input.
main(_) -> timer:sleep(infinity).
