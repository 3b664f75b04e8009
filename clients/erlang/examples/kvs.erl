%% kvs: the tiny key-value store of Programming Erlang, in the book's style: one
%% registered process keeps the pairs in its process dictionary, and store/2 and
%% lookup/1 are remote procedure calls to it.
%%
%%   kvs:start()                 -> true    (the book starts it from the shell)
%%   kvs:store(Key, Value)       -> true
%%   kvs:lookup(Key)             -> {ok, Value} | undefined
%%
%% Keys are the same key when they are the same term (=:=). Unlike the book's, store/2
%% and lookup/1 start the store if it is not running yet, so a port program needs no
%% start-up step; two processes starting it at once get the same one.

-module(kvs).
-export([start/0, store/2, lookup/1]).

start() ->
    case whereis(kvs) of
        undefined ->
            Pid = spawn(fun() -> loop() end),
            try register(kvs, Pid)
            catch
                error:badarg ->
                    %% Someone else registered one first: use that one.
                    exit(Pid, kill),
                    true
            end;
        _ ->
            true
    end.

store(Key, Value) -> rpc({store, Key, Value}).

lookup(Key) -> rpc({lookup, Key}).

rpc(Q) ->
    start(),
    kvs ! {self(), Q},
    receive
        {kvs, Reply} -> Reply
    end.

loop() ->
    receive
        {From, {store, Key, Value}} ->
            put(Key, {ok, Value}),
            From ! {kvs, true},
            loop();
        {From, {lookup, Key}} ->
            From ! {kvs, get(Key)},
            loop()
    end.
