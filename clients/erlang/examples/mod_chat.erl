%% mod_chat: IRC Lite, the chat of Programming Erlang, as a lib_chan service in the
%% book's style, for lib_chan_port (see chat.escript):
%%
%%   erl -noinput -pa DIR -run lib_chan_port main mod_chat start
%%
%% As in the book, the handler of each connection (start/3, the book's
%% mod_chat_controller) only passes what its client says to one chat server process
%% (registered as mod_chat_server, the book's chat_server and chat_group in one), and the
%% chat server pushes what a group hears straight to each member's middle man with
%% MM ! {send, Event}. It answers the same requests as the server's built-in chat
%% (services/src/chat.rs):
%%
%%   request                as a call, the reply             what the group hears
%%   {login, Group, Nick}   true                             {joined, Nick, Group}
%%   {relay, Text}          true                             {msg, Nick, Group, Text}
%%   logout                 true                             {left, Nick, Group}
%%   members                the group's nicks, in term order nothing
%%
%% Every member hears every event of its group, its own included (the newcomer hears
%% its own joined, the speaker its own msg); a member who logs out hears nothing of its
%% own left. When a member's channel closes, or its handler ends, the others hear
%% {left, Nick, Group}. The events of a group reach all its members in one order, and a
%% caller hears the event of its own request before the reply.
%%
%% Refusals, for a call {error, Ref, Reason}: not_logged_in (relay, logout or members
%% before login), already_logged_in (login twice; logout first), nick_taken (another
%% member of the group has the nick; the same nick in another group is fine),
%% {bad_request, X} (a Group or Nick that is not an atom, a charlist or a UTF-8 binary
%% of 1 to 64 characters, or any other request). Group and nick names compare as
%% terms: "room" and <<"room">> are two groups. Text is any term.
%%
%% The same requests may be cast (lib_chan:cast, {send, X} on the wire), as the book's
%% chat client does: they take effect the same way and nothing is answered, except
%% members, whose list comes back as a push; a refused cast is dropped with a log line.
%%
%% Calls. A book-style handler cannot answer calls here: a chat server pushes to members
%% at any time, and lib_chan_port's book mode would take a push for the answer of a call
%% (login's own joined, say). So this module is call-aware: the attribute below makes
%% lib_chan_port deliver a call as {call, MM, Ref, X}, and the chat server answers it
%% with MM ! {reply, Ref, Y} or MM ! {error, Ref, Reason}, after its pushes to the same
%% MM. Casts still arrive as the book's {chan, MM, X}.

-module(mod_chat).
-lib_chan_port(calls).
-export([start/3]).

-define(SERVER, mod_chat_server).
-define(MAX_NAME, 64).

%%% The handler of one connection (the book's mod_chat_controller).

start(MM, _ArgsC, _ArgsS) ->
    Server = server(),
    loop(MM, Server).

loop(MM, Server) ->
    receive
        {chan, MM, X} ->
            Server ! {request, MM, none, X},
            loop(MM, Server);
        {call, MM, Ref, X} ->
            Server ! {request, MM, Ref, X},
            loop(MM, Server);
        {chan_closed, MM} ->
            Server ! {gone, MM}
    end.

%% The chat server, started by the first connection.
server() ->
    case whereis(?SERVER) of
        undefined ->
            Pid = spawn(fun() -> server_loop(#{}, #{}) end),
            try register(?SERVER, Pid), Pid
            catch
                error:badarg ->
                    exit(Pid, kill),
                    server()
            end;
        Pid ->
            Pid
    end.

%%% The chat server (the book's chat_server and chat_group).
%%
%% Members: MM => {Group, Nick, Monitor}.  Groups: Group => #{Nick => MM}.

server_loop(Members, Groups) ->
    receive
        {request, MM, Ref, X} ->
            {Answer, Members1, Groups1} = request(parse(X), MM, Members, Groups),
            answer(MM, Ref, X, Answer),
            server_loop(Members1, Groups1);
        {gone, MM} ->
            {Members1, Groups1} = leave(MM, Members, Groups),
            server_loop(Members1, Groups1);
        {'DOWN', _, process, MM, _} ->
            {Members1, Groups1} = leave(MM, Members, Groups),
            server_loop(Members1, Groups1)
    end.

parse(logout) -> logout;
parse(members) -> members;
parse({login, Group, Nick} = X) ->
    case is_name(Group) andalso is_name(Nick) of
        true -> X;
        false -> bad
    end;
parse({relay, _} = X) -> X;
parse(_) -> bad.

%% An atom, a charlist or a UTF-8 binary of 1 to 64 characters.
is_name(A) when is_atom(A) -> fits(length(atom_to_list(A)));
is_name(B) when is_binary(B) ->
    fits(byte_size(B)) andalso is_list(unicode:characters_to_list(B));
is_name(L) when is_list(L) ->
    try length(L) of
        N -> fits(N) andalso lists:all(fun is_char/1, L)
    catch error:badarg -> false
    end;
is_name(_) -> false.

fits(N) -> N >= 1 andalso N =< ?MAX_NAME.

is_char(C) when is_integer(C), C >= 0, C < 16#D800 -> true;
is_char(C) when is_integer(C), C > 16#DFFF, C =< 16#10FFFF -> true;
is_char(_) -> false.

request(bad, _MM, Members, Groups) ->
    {bad_request, Members, Groups};
request({login, Group, Nick}, MM, Members, Groups) ->
    Nicks = maps:get(Group, Groups, #{}),
    case {Members, Nicks} of
        {#{MM := _}, _} ->
            {{error, already_logged_in}, Members, Groups};
        {_, #{Nick := _}} ->
            {{error, nick_taken}, Members, Groups};
        _ ->
            Mon = erlang:monitor(process, MM),
            Nicks1 = Nicks#{Nick => MM},
            broadcast(Nicks1, {joined, Nick, Group}),
            {{ok, true}, Members#{MM => {Group, Nick, Mon}}, Groups#{Group => Nicks1}}
    end;
request({relay, Text}, MM, Members, Groups) ->
    case Members of
        #{MM := {Group, Nick, _}} ->
            broadcast(maps:get(Group, Groups), {msg, Nick, Group, Text}),
            {{ok, true}, Members, Groups};
        _ ->
            {{error, not_logged_in}, Members, Groups}
    end;
request(logout, MM, Members, Groups) ->
    case Members of
        #{MM := _} ->
            {Members1, Groups1} = leave(MM, Members, Groups),
            {{ok, true}, Members1, Groups1};
        _ ->
            {{error, not_logged_in}, Members, Groups}
    end;
request(members, MM, Members, Groups) ->
    case Members of
        #{MM := {Group, _, _}} ->
            {{ok, lists:sort(maps:keys(maps:get(Group, Groups)))}, Members, Groups};
        _ ->
            {{error, not_logged_in}, Members, Groups}
    end.

%% Takes MM out of its group, if it is in one, and tells the others.
leave(MM, Members, Groups) ->
    case maps:take(MM, Members) of
        {{Group, Nick, Mon}, Members1} ->
            erlang:demonitor(Mon, [flush]),
            Nicks = maps:remove(Nick, maps:get(Group, Groups)),
            broadcast(Nicks, {left, Nick, Group}),
            Groups1 = case map_size(Nicks) of
                          0 -> maps:remove(Group, Groups);
                          _ -> Groups#{Group => Nicks}
                      end,
            {Members1, Groups1};
        error ->
            {Members, Groups}
    end.

broadcast(Nicks, Event) ->
    [MM ! {send, Event} || MM <- maps:values(Nicks)],
    ok.

%% A call gets its answer; a cast gets nothing, but members' list, as a push.
answer(MM, none, members, {ok, List}) ->
    MM ! {send, List};
answer(_MM, none, _X, {ok, _}) ->
    ok;
answer(_MM, none, X, bad_request) ->
    log("ignored an unknown send ~tp", [X]);
answer(_MM, none, X, {error, Why}) ->
    log("refused a send ~tp: ~p", [X, Why]);
answer(MM, Ref, _X, {ok, Y}) ->
    MM ! {reply, Ref, Y};
answer(MM, Ref, X, bad_request) ->
    MM ! {error, Ref, {bad_request, X}};
answer(MM, Ref, _X, {error, Why}) ->
    MM ! {error, Ref, Why}.

log(Fmt, Args) ->
    io:format(standard_error, "mod_chat: " ++ Fmt ++ "~n", Args).
