%% lib_chan_port: runs a book-style lib_chan service module (Programming Erlang) as a
%% port program of lib_chan-rs (PROTOCOL.md section 9), unchanged.
%%
%% In the book, lib_chan spawns Mod:Func(MM, ArgsC, ArgsS) for each connection; MM, the
%% "middle man", delivers {chan, MM, X} for each message of the client and
%% {chan_closed, MM} when it goes away, and takes MM ! {send, X} and MM ! close. This
%% module plays lib_chan and the middle man: it reads the server's {packet, 4} frames on
%% standard input, writes its own on standard output, and gives each connection its own
%% MM process and handler process.
%%
%% Running it
%%   erl -noinput -pa DIR -run lib_chan_port main Mod Func [Option...]
%%   escript SCRIPT            (an escript whose main/1 calls lib_chan_port:main/1, with
%%                              "%%! -noinput" on its second or third line; see
%%                              examples/name_server.escript)
%% -noinput is required: without it the node's own console reads standard input too and
%% takes frames away (OTP 25 even reports "stealing control of fd=0" on standard
%% output). The runner refuses to start without it. main/1 returns only by halting the
%% node: 0 when standard input closes (the server stops the program), 1 when standard
%% output fails, 2 for a bad command line or a module that cannot be loaded.
%%
%% Standard output is the protocol: the runner makes itself and every process it starts
%% write to standard error instead (their group leader is standard_error, and the
%% logger's default handler is moved there), so a handler's io:format and crash reports
%% land in the server's log. Only io:format(user, ...) would still reach standard
%% output: do not use it.
%%
%% Frames (PROTOCOL.md section 9)
%%   {hello, 2, ArgsS}           ArgsS is kept for every later connection
%%   {open, Conn, ArgsC, Info}   spawns MM, then Mod:Func(MM, ArgsC, ArgsS), linked
%%                               to MM (MM traps exits, as the book's middle man)
%%   {chan, Conn, X}             the handler gets {chan, MM, X}
%%   {call, Conn, Ref, X}        see "Calls" below
%%   {closed, Conn}              the handler gets {chan_closed, MM} (after what was
%%                               held back, below), then MM ends
%%   MM ! {send, Y}              {send, Conn, Y} (or the answer to a call, below)
%%   MM ! close                  {close, Conn}; calls not answered yet get
%%                               {error, Conn, Ref, no_reply} first; then MM ends
%% When the handler ends, its calls not answered yet get {error, Conn, Ref, Reason},
%% Reason being handler_crashed if it exited with any reason but normal and no_reply if
%% it returned (or exited normal), and the connection gets {close, Conn}. A handler that
%% traps exits gets {'EXIT', MM, normal} when MM ends. A handler that keeps running
%% after {chan_closed, MM} is left alone (as in the book); what it sends MM then is
%% dropped. Frames for a Conn that is not open are ignored (the server's {closed, Conn}
%% after our {close, Conn} among them). lib_chan_port:info(MM) returns the connection's
%% Info map (peer => <<"ADDR:PORT">>, and user => Name after a named user's login).
%%
%% Calls. A client may call ({call, Ref, X}: it waits for the answer of X) where the
%% book's client casts and waits for the next message. How a call reaches the handler
%% depends on what the handler module knows:
%%
%%   Call-aware modules say so with the attribute -lib_chan_port(calls). (or the runner
%%   is given the option calls). They get {call, MM, Ref, X} and answer it with
%%   MM ! {reply, Ref, Y} or MM ! {error, Ref, Reason}, in any order, from any process;
%%   every {send, Y} is then a push, {send, Conn, Y}. An answer to a Ref that is not
%%   waiting (answered already, or never called) is dropped with a log line.
%%
%%   Book modules (the default; the option book forces it) only know {chan, MM, X}. A
%%   call is delivered as {chan, MM, X} and answered by this rule, the "call window":
%%
%%   1. At rest. The handler is at rest when process_info says its status is waiting
%%      (blocked in a receive) and its current function belongs to Mod, the handler
%%      module itself. A handler blocked in a receive of another module (kvs:rpc/1,
%%      gen_server:call/2, timer:sleep/1, ...) is still working on a message.
%%   2. A call is delivered only when the handler is at rest, and the messages MM had
%%      received before it saw the handler at rest have been dealt with (so what the
%%      handler sent for earlier messages is never taken for this call's answer). While
%%      a call is open (delivered, not answered yet), MM holds back every later frame
%%      of the connection (chan and call alike), in order.
%%   3. The answer is the first MM ! {send, Y} that reaches MM after the call was
%%      delivered: it goes out as {reply, Conn, Ref, Y}. Later sends are pushes.
%%   4. If the handler comes to rest again with no such send (MM first deals with every
%%      message it had received by then), the handler answered nothing: then
%%        - if the message {chan, MM, X} is still in the handler's queue (its receive
%%          does not match it: it does not know the request), the call gets
%%          {error, Conn, Ref, {bad_request, X}};
%%        - else the call gets {reply, Conn, Ref, true}.
%%      So the book's store ({store, K, V}, answered with nothing) replies true, as
%%      PROTOCOL.md section 7 promises, and its lookup replies what it sends back.
%%   5. A call not answered within call_timeout ms (default 30000) of becoming the
%%      next call to deliver (every earlier frame of its connection delivered or
%%      answered) gets {error, Conn, Ref, timeout}: if it was still held back it is
%%      never delivered, and if it was open a later send of the handler is a push.
%%      Then the next frames go on. (The server has its own call_timeout, counted
%%      from the client's call.)
%%   6. A send that arrives when no call is open is a push, {send, Conn, Y}.
%%
%%   The rule is exact for a handler that does its work in its own process and module
%%   and waits in a receive of Mod between messages, as the book's handlers do. It
%%   cannot tell a push from an answer: a send that some other process makes to MM
%%   while a call is open (a chat room broadcasting to its members) is taken for the
%%   answer. It also takes a handler that waits for a helper's answer in a receive of
%%   Mod itself for a handler at rest (the call gets true, the answer comes as a push),
%%   and one whose receive loop is in another module never comes to rest (its calls
%%   time out). Such handlers should be call-aware. Casts ({chan, Conn, X}) are never
%%   held back when no call is open. While it waits for the handler to come to rest,
%%   MM looks at it with process_info at once, then after 0, 1, 1, 2, 4 and 8 ms, then
%%   every 10 ms: an answer found at rest (a store's true) comes at most about 10 ms
%%   after the handler's work is done; an answer sent comes at once.
%%
%% Options (strings after Mod and Func)
%%   calls | book         force the call-aware or the book mode
%%   call_timeout=Ms      book mode: rule 5 (default 30000)
%%   new_atoms=N          at most N atoms are created from what clients send; default
%%                        100000, 0 for none (see "Atoms")
%%   max_frame=Bytes      the largest frame written (default 1048576, the server's
%%                        default max_frame)
%%
%% Atoms. Every frame is first decoded with binary_to_term(B, [safe]). A frame that
%% names atoms the node does not know (clients pick their own: {store, joe, ...}) is
%% decoded with binary_to_term/1, creating them, as long as fewer than new_atoms atoms
%% were created so far; after that it is refused: a call gets
%% {error, Conn, Ref, atom_limit}, an open gets {close, Conn}, a chan is dropped (each
%% with a log line). Atoms are never garbage collected, so this keeps a client from
%% filling the atom table and bringing down every connection of the service. hello is
%% always decoded (its ArgsS comes from the server's configuration).
%%
%% What the handler sends is checked before it is written (PROTOCOL.md section 3: no
%% pids, references, funs, ports, bit strings or improper lists, integers within
%% signed 64 bits, nesting within 100 levels, the frame within max_frame), since the
%% server treats a bad frame as a crash of the whole program. A bad send is dropped
%% with a log line; a bad answer to a call becomes {error, Conn, Ref, bad_term}.

-module(lib_chan_port).

-export([main/1, info/1, known_atoms/0]).

-define(CALL_TIMEOUT, 30000).
-define(NEW_ATOMS, 100000).
-define(MAX_FRAME, 1048576).
-define(MAX_DEPTH, 100).
%% Delays (ms) between looks at a busy handler; then ?MAX_POLL each.
-define(POLLS, [0, 0, 1, 1, 2, 4, 8]).
-define(MAX_POLL, 10).

%% The runner: owns the port, routes frames.
-record(run, {
    port,
    mod,
    func,
    mode,                  %% book | calls
    args_s = undefined,
    conns = #{},           %% Conn => MM pid
    mms = #{},             %% MM pid => Conn
    atoms_made = 0,
    new_atoms,
    call_timeout,
    max_frame
}).

%% One connection's middle man.
-record(mm, {
    conn,
    out,                   %% the runner
    handler,
    mod,
    mode,
    info,
    call_timeout,
    max_frame,
    held = queue:new(),    %% book: frames not delivered yet, oldest first:
                           %%   {chan, X} | {call, Ref, X, TRef | undefined}
                           %%   | {refused, Ref} (over new_atoms)
    window = none,         %% book: none | {Ref, X, CopiesBefore, TRef}
    polls = ?POLLS,        %% book: the next delays between looks at the handler
    look_at,               %% book: when to look next (monotonic ms)
    pending = #{}          %% calls: Ref => true
}).

%%% Entry point

main([ModS, FuncS | Opts]) ->
    try
        start(ModS, FuncS, Opts)
    catch
        throw:{usage, Fmt, Args} ->
            log(Fmt, Args),
            erlang:halt(2);
        C:R:S ->
            log("stopped: ~tp", [{C, R, S}]),
            erlang:halt(2)
    end;
main(_) ->
    log("usage: lib_chan_port main Mod Func [calls | book | call_timeout=Ms | "
        "new_atoms=N | max_frame=Bytes]...", []),
    erlang:halt(2).

start(ModS, FuncS, Opts) ->
    to_stderr(),
    case init:get_argument(noinput) of
        {ok, _} -> ok;
        error -> throw({usage, "the node must run with -noinput (erl -noinput ..., or "
                       "\"%%! -noinput\" in the escript): else it reads standard input "
                       "itself and loses frames", []})
    end,
    Mod = list_to_atom(ModS),
    Func = list_to_atom(FuncS),
    case code:ensure_loaded(Mod) of
        {module, Mod} -> ok;
        {error, Why} -> throw({usage, "cannot load ~ts: ~tp", [ModS, Why]})
    end,
    erlang:function_exported(Mod, Func, 3) orelse
        throw({usage, "~ts:~ts/3 is not exported", [ModS, FuncS]}),
    Declared = proplists:get_value(lib_chan_port, Mod:module_info(attributes), []),
    Mode0 = case lists:member(calls, Declared) of true -> calls; false -> book end,
    Run = options(Opts, #run{mod = Mod, func = Func, mode = Mode0,
                             new_atoms = ?NEW_ATOMS, call_timeout = ?CALL_TIMEOUT,
                             max_frame = ?MAX_FRAME}),
    process_flag(trap_exit, true),
    Port = open_port({fd, 0, 1}, [{packet, 4}, binary, eof]),
    loop(Run#run{port = Port}).

options([], Run) -> Run;
options(["calls" | T], Run) -> options(T, Run#run{mode = calls});
options(["book" | T], Run) -> options(T, Run#run{mode = book});
options([Opt | T], Run) ->
    case string:split(Opt, "=") of
        ["call_timeout", V] -> options(T, Run#run{call_timeout = number(Opt, V)});
        ["new_atoms", V] -> options(T, Run#run{new_atoms = number(Opt, V)});
        ["max_frame", V] -> options(T, Run#run{max_frame = number(Opt, V)});
        _ -> throw({usage, "unknown option ~tp", [Opt]})
    end.

number(Opt, V) ->
    try list_to_integer(V) of
        N when N >= 0 -> N;
        _ -> throw({usage, "bad option ~tp", [Opt]})
    catch error:badarg -> throw({usage, "bad option ~tp", [Opt]})
    end.

%% Everything this node prints goes to standard error: standard output is the protocol.
to_stderr() ->
    group_leader(whereis(standard_error), self()),
    _ = logger:remove_handler(default),
    ok = logger:add_handler(default, logger_std_h,
                            #{config => #{type => standard_error}}).

%% The connection's Info map, asked from its middle man.
info(MM) ->
    Mon = erlang:monitor(process, MM),
    MM ! {lib_chan_port_info, self(), Mon},
    receive
        {Mon, Info} -> erlang:demonitor(Mon, [flush]), Info;
        {'DOWN', Mon, process, MM, _} -> undefined
    after 5000 ->
        erlang:demonitor(Mon, [flush]),
        undefined
    end.

%%% The runner

loop(#run{port = Port} = Run) ->
    receive
        {Port, {data, B}} ->
            loop(inbound(B, Run));
        {lib_chan_port_out, MM, Conn, Bin} ->
            case Run#run.conns of
                #{Conn := MM} -> port_command(Port, Bin);
                _ -> ok
            end,
            loop(Run);
        {lib_chan_port_done, MM, Conn} ->
            loop(forget(Conn, MM, Run));
        {'DOWN', _, process, MM, Why} ->
            case Run#run.mms of
                #{MM := Conn} ->
                    %% A middle man that ends without saying so has failed.
                    log("connection ~p: middle man ended: ~tp", [Conn, Why]),
                    port_command(Port, encode({close, Conn})),
                    loop(forget(Conn, MM, Run));
                _ ->
                    loop(Run)
            end;
        {Port, eof} ->
            erlang:halt(0);
        {'EXIT', Port, Why} ->
            log("standard output or input failed: ~tp", [Why]),
            erlang:halt(1);
        Other ->
            log("runner ignored ~ts", [snippet(Other)]),
            loop(Run)
    end.

forget(Conn, MM, #run{conns = Conns, mms = MMs} = Run) ->
    case Conns of
        #{Conn := MM} -> Run#run{conns = maps:remove(Conn, Conns), mms = maps:remove(MM, MMs)};
        _ -> Run
    end.

inbound(B, Run) ->
    try binary_to_term(B, [safe]) of
        T -> dispatch(T, Run)
    catch
        error:badarg -> inbound_unsafe(B, envelope(B), Run)
    end.

%% A frame naming atoms this node does not know.
inbound_unsafe(B, Env, #run{atoms_made = Made, new_atoms = Max} = Run)
  when Env =:= hello; Made < Max ->
    Before = erlang:system_info(atom_count),
    try binary_to_term(B) of
        T ->
            Made1 = case Env of
                        hello -> Made;
                        _ -> Made + erlang:system_info(atom_count) - Before
                    end,
            dispatch(T, Run#run{atoms_made = Made1})
    catch
        error:badarg ->
            log("ignored a frame that is not a term (~p bytes)", [byte_size(B)]),
            Run
    end;
inbound_unsafe(_B, Env, Run) ->
    refuse(Env, Run).

refuse({call, Conn, Ref}, Run) ->
    log("connection ~p: call ~p refused: new_atoms limit reached", [Conn, Ref]),
    %% Through the middle man, so that it keeps its place among the connection's
    %% answers.
    to_mm(Conn, {refused, Ref}, Run);
refuse({chan, Conn}, Run) ->
    log("connection ~p: message dropped: new_atoms limit reached", [Conn]),
    Run;
refuse({open, Conn}, Run) ->
    log("connection ~p refused: new_atoms limit reached", [Conn]),
    port_command(Run#run.port, encode({close, Conn})),
    Run;
refuse(_, Run) ->
    log("ignored a frame: new_atoms limit reached", []),
    Run.

dispatch({hello, Version, ArgsS}, Run) ->
    case Version of
        2 -> ok;
        _ -> log("hello with protocol version ~tp; speaking 2", [Version])
    end,
    Run#run{args_s = ArgsS};
dispatch({open, Conn, ArgsC, Info}, #run{conns = Conns} = Run) when is_integer(Conn) ->
    case Conns of
        #{Conn := _} ->
            log("connection ~p opened twice; ignored", [Conn]),
            Run;
        _ ->
            MM = spawn_mm(Conn, ArgsC, Info, Run),
            erlang:monitor(process, MM),
            Run#run{conns = Conns#{Conn => MM}, mms = (Run#run.mms)#{MM => Conn}}
    end;
dispatch({chan, Conn, X}, Run) ->
    to_mm(Conn, {chan, X}, Run);
dispatch({call, Conn, Ref, X}, Run) when is_integer(Ref) ->
    to_mm(Conn, {call, Ref, X}, Run);
dispatch({closed, Conn}, #run{conns = Conns} = Run) ->
    case Conns of
        #{Conn := MM} ->
            MM ! {lib_chan_port_in, closed},
            forget(Conn, MM, Run);
        _ ->
            %% After our own {close, Conn} the server says closed too.
            Run
    end;
dispatch(T, Run) ->
    log("ignored a frame that is not of the port protocol: ~ts", [snippet(T)]),
    Run.

to_mm(Conn, In, #run{conns = Conns} = Run) ->
    case Conns of
        #{Conn := MM} -> MM ! {lib_chan_port_in, In};
        _ -> ok
    end,
    Run.

%% The tag, Conn (and Ref) of a frame that was not decoded, read from its bytes.
envelope(<<131, 104, _Arity, B/binary>>) ->
    case atom_ext(B) of
        {<<"hello">>, _} -> hello;
        {<<"call">>, B1} -> ints(B1, 2, [call]);
        {<<"chan">>, B1} -> ints(B1, 1, [chan]);
        {<<"open">>, B1} -> ints(B1, 1, [open]);
        _ -> unknown
    end;
envelope(_) ->
    unknown.

atom_ext(<<119, L, A:L/binary, B/binary>>) -> {A, B};
atom_ext(<<115, L, A:L/binary, B/binary>>) -> {A, B};
atom_ext(<<118, L:16, A:L/binary, B/binary>>) -> {A, B};
atom_ext(<<100, L:16, A:L/binary, B/binary>>) -> {A, B};
atom_ext(_) -> unknown.

ints(_, 0, Acc) -> list_to_tuple(lists:reverse(Acc));
ints(<<97, I, B/binary>>, N, Acc) -> ints(B, N - 1, [I | Acc]);
ints(<<98, I:32/signed, B/binary>>, N, Acc) -> ints(B, N - 1, [I | Acc]);
ints(<<110, L, 0, D:L/binary, B/binary>>, N, Acc) ->
    ints(B, N - 1, [binary:decode_unsigned(D, little) | Acc]);
ints(_, _, _) -> unknown.

spawn_mm(Conn, ArgsC, Info, #run{mod = Mod, func = Func, args_s = ArgsS} = Run) ->
    Out = self(),
    St = #mm{conn = Conn, out = Out, mod = Mod, mode = Run#run.mode, info = Info,
             call_timeout = Run#run.call_timeout, max_frame = Run#run.max_frame},
    spawn(fun() ->
                  process_flag(trap_exit, true),
                  H = spawn_link(Mod, Func, [self(), ArgsC, ArgsS]),
                  mm_loop(reset(St#mm{handler = H}))
          end).

%%% The middle man

mm_loop(St0) ->
    St = advance(St0),
    case needs_rest(St) of
        false ->
            receive M -> mm_loop(handle(M, St)) end;
        true ->
            Wait = St#mm.look_at - now_ms(),
            if
                Wait =< 0 ->
                    mm_loop(look(St));
                true ->
                    receive M -> mm_loop(handle(M, St))
                    after Wait -> mm_loop(St)
                    end
            end
    end.

now_ms() -> erlang:monotonic_time(millisecond).

%% Book mode: a call is open, or the next frame to deliver is a call.
needs_rest(#mm{mode = book, window = {_, _, _, _}}) -> true;
needs_rest(#mm{mode = book, held = Held}) ->
    case queue:peek(Held) of
        {value, {call, _, _, _}} -> true;
        _ -> false
    end;
needs_rest(_) -> false.

%% Book mode: delivers the casts at the head of what is held while no call is open.
%% A call that is next starts its clock (rule 5).
advance(#mm{mode = book, window = none, held = Held, handler = H} = St) ->
    case queue:out(Held) of
        {{value, {chan, X}}, Rest} ->
            H ! {chan, self(), X},
            advance(St#mm{held = Rest});
        {{value, {refused, Ref}}, Rest} ->
            emit({error, St#mm.conn, Ref, atom_limit}, St),
            advance(St#mm{held = Rest});
        {{value, {call, Ref, X, undefined}}, Rest} ->
            TRef = erlang:start_timer(St#mm.call_timeout, self(), {call_timeout, Ref}),
            St#mm{held = queue:in_r({call, Ref, X, TRef}, Rest)};
        _ ->
            St
    end;
advance(St) ->
    St.

%% Book mode: looks at the handler; rules 1, 2 and 4 of the header.
look(#mm{handler = H, mod = Mod} = St) ->
    case process_info(H, [status, current_function, message_queue_len]) of
        [{status, waiting}, {current_function, {Mod, _, _}}, {message_queue_len, QLen}] ->
            {message_queue_len, Mine} = process_info(self(), message_queue_len),
            St1 = drain(Mine, St),
            St2 = answer_at_rest(QLen, St1),
            open_call(QLen, St2);
        _ ->
            {Delay, Polls} = case St#mm.polls of
                                 [D | Ds] -> {D, Ds};
                                 [] -> {?MAX_POLL, []}
                             end,
            St#mm{look_at = now_ms() + Delay, polls = Polls}
    end.

%% Deals with the N messages MM had when it saw the handler at rest, without
%% delivering anything to the handler.
drain(0, St) -> St;
drain(N, St) -> receive M -> drain(N - 1, handle(M, St)) end.

%% Rule 4: the handler came to rest without answering the open call.
answer_at_rest(QLen, #mm{window = {Ref, X, Before, TRef}} = St) ->
    cancel(TRef),
    case copies(QLen, X, St) > Before of
        true -> emit({error, St#mm.conn, Ref, {bad_request, X}}, St);
        false -> emit({reply, St#mm.conn, Ref, true}, St)
    end,
    reset(St#mm{window = none});
answer_at_rest(_, St) ->
    St.

%% Rule 2: at rest, opens the next call if it is the next frame.
open_call(QLen, #mm{window = none, held = Held} = St) ->
    case queue:out(Held) of
        {{value, {call, Ref, X, TRef0}}, Rest} ->
            TRef = case TRef0 of
                       undefined -> erlang:start_timer(St#mm.call_timeout, self(),
                                                       {call_timeout, Ref});
                       _ -> TRef0
                   end,
            Before = copies(QLen, X, St),
            St#mm.handler ! {chan, self(), X},
            reset(St#mm{window = {Ref, X, Before, TRef}, held = Rest});
        _ ->
            St
    end;
open_call(_, St) ->
    St.

reset(St) -> St#mm{polls = ?POLLS, look_at = now_ms()}.

%% How many {chan, MM, X} wait in the handler's queue (of QLen messages).
copies(0, _X, _St) -> 0;
copies(_, X, #mm{handler = H}) ->
    Me = self(),
    case process_info(H, messages) of
        {messages, Ms} -> length([M || {chan, P, Y} = M <- Ms, P =:= Me, Y =:= X]);
        undefined -> 0
    end.

cancel(undefined) ->
    ok;
cancel(TRef) ->
    _ = erlang:cancel_timer(TRef, [{async, true}, {info, false}]),
    ok.

handle({lib_chan_port_in, In}, St) ->
    inbound_mm(In, St);
handle({send, Y}, #mm{mode = book, window = {Ref, _, _, TRef}} = St) ->
    cancel(TRef),
    answer(Ref, reply, Y, St),
    reset(St#mm{window = none});
handle({send, Y}, St) ->
    push(Y, St),
    St;
handle({reply, Ref, Y}, #mm{mode = calls} = St) ->
    answer_pending(Ref, reply, Y, St);
handle({error, Ref, Y}, #mm{mode = calls} = St) ->
    answer_pending(Ref, error, Y, St);
handle(close, St) ->
    fail_all(no_reply, St),
    emit({close, St#mm.conn}, St),
    done(St);
handle({'EXIT', H, Why}, #mm{handler = H, conn = Conn, mod = Mod} = St) ->
    Reason = case Why of
                 normal -> no_reply;
                 _ ->
                     log("connection ~p: handler ~p (~p) crashed: ~ts",
                         [Conn, H, Mod, snippet(Why)]),
                     handler_crashed
             end,
    fail_all(Reason, St),
    emit({close, Conn}, St),
    done(St);
handle({timeout, TRef, {call_timeout, Ref}}, #mm{window = {Ref, _, _, TRef}} = St) ->
    emit({error, St#mm.conn, Ref, timeout}, St),
    reset(St#mm{window = none});
handle({timeout, TRef, {call_timeout, Ref}}, #mm{held = Held} = St) ->
    Timed = fun({call, R, _, T}) -> R =:= Ref andalso T =:= TRef; (_) -> false end,
    case queue:any(Timed, Held) of
        true ->
            emit({error, St#mm.conn, Ref, timeout}, St),
            St#mm{held = queue:filter(fun(F) -> not Timed(F) end, Held)};
        false ->
            St
    end;
handle({lib_chan_port_info, From, Tag}, St) ->
    From ! {Tag, St#mm.info},
    St;
handle({'EXIT', _, _}, St) ->
    St;
handle(Other, St) ->
    log("connection ~p: middle man ignored ~ts", [St#mm.conn, snippet(Other)]),
    St.

inbound_mm({chan, X}, #mm{mode = book, held = Held} = St) ->
    St#mm{held = queue:in({chan, X}, Held)};
inbound_mm({call, Ref, X}, #mm{mode = book, held = Held} = St) ->
    St#mm{held = queue:in({call, Ref, X, undefined}, Held)};
inbound_mm({refused, Ref}, #mm{mode = book, held = Held} = St) ->
    St#mm{held = queue:in({refused, Ref}, Held)};
inbound_mm({refused, Ref}, St) ->
    emit({error, St#mm.conn, Ref, atom_limit}, St),
    St;
inbound_mm({chan, X}, #mm{handler = H} = St) ->
    H ! {chan, self(), X},
    St;
inbound_mm({call, Ref, X}, #mm{handler = H, pending = P} = St) ->
    H ! {call, self(), Ref, X},
    St#mm{pending = P#{Ref => true}};
inbound_mm(closed, #mm{handler = H} = St) ->
    %% Nothing more can be sent; what was held back is still delivered, in order.
    case St#mm.window of
        {_, _, _, T0} -> cancel(T0);
        none -> ok
    end,
    lists:foreach(fun({chan, X}) -> H ! {chan, self(), X};
                     ({call, _, X, T}) -> cancel(T), H ! {chan, self(), X};
                     ({refused, _}) -> ok
                  end, queue:to_list(St#mm.held)),
    H ! {chan_closed, self()},
    exit(normal).

%% Calls mode: an answer from the handler.
answer_pending(Ref, Kind, Y, #mm{pending = P} = St) ->
    case P of
        #{Ref := _} ->
            answer(Ref, Kind, Y, St),
            St#mm{pending = maps:remove(Ref, P)};
        _ ->
            log("connection ~p: ~p for call ~tp that is not waiting; dropped",
                [St#mm.conn, Kind, Ref]),
            St
    end.

answer(Ref, Kind, Y, #mm{conn = Conn} = St) ->
    case encode_checked({Kind, Conn, Ref, Y}, St) of
        {ok, Bin} ->
            emit_bin(Bin, St);
        {error, Why} ->
            log("connection ~p: answer to call ~p cannot be sent (~ts): ~ts",
                [Conn, Ref, Why, snippet(Y)]),
            emit({error, Conn, Ref, bad_term}, St)
    end.

push(Y, #mm{conn = Conn} = St) ->
    case encode_checked({send, Conn, Y}, St) of
        {ok, Bin} ->
            emit_bin(Bin, St);
        {error, Why} ->
            log("connection ~p: send dropped (~ts): ~ts", [Conn, Why, snippet(Y)])
    end.

%% Every call not answered yet, oldest first, gets {error, Conn, Ref, Reason}.
fail_all(Reason, #mm{mode = book, conn = Conn} = St) ->
    Open = case St#mm.window of
               {Ref, _, _, T0} -> cancel(T0), [{Ref, Reason}];
               none -> []
           end,
    Held = lists:flatmap(fun({call, R, _, T}) -> cancel(T), [{R, Reason}];
                            ({refused, R}) -> [{R, atom_limit}];
                            ({chan, _}) -> []
                         end, queue:to_list(St#mm.held)),
    [emit({error, Conn, R, Why}, St) || {R, Why} <- Open ++ Held],
    ok;
fail_all(Reason, #mm{conn = Conn, pending = P} = St) ->
    [emit({error, Conn, Ref, Reason}, St) || Ref <- lists:sort(maps:keys(P))],
    ok.

done(#mm{out = Out, conn = Conn}) ->
    Out ! {lib_chan_port_done, self(), Conn},
    exit(normal).

emit(T, St) ->
    emit_bin(encode(T), St).

emit_bin(Bin, #mm{out = Out, conn = Conn}) ->
    Out ! {lib_chan_port_out, self(), Conn, Bin},
    ok.

encode(T) ->
    term_to_binary(T, [{minor_version, 2}]).

%% PROTOCOL.md section 3: only data crosses the wire.
encode_checked(T, #mm{max_frame = Max}) ->
    case data(T, 0) of
        true ->
            Bin = encode(T),
            case byte_size(Bin) of
                N when N =< Max -> {ok, Bin};
                N -> {error, io_lib:format("~p bytes, over max_frame ~p", [N, Max])}
            end;
        false ->
            {error, "not data: a pid, reference, fun, port, bit string, improper list, "
                    "integer beyond 64 bits or nesting beyond 100 levels"}
    end.

data(T, _) when is_atom(T); is_float(T); is_binary(T) -> true;
data(T, _) when is_integer(T) -> T >= -(1 bsl 63) andalso T < (1 bsl 63);
data(_, D) when D >= ?MAX_DEPTH -> false;
data(T, D) when is_list(T) -> data_list(T, D + 1);
data(T, D) when is_tuple(T) -> data_list(tuple_to_list(T), D + 1);
data(T, D) when is_map(T) ->
    lists:all(fun({K, V}) -> data(K, D + 1) andalso data(V, D + 1) end, maps:to_list(T));
data(_, _) -> false.

data_list([], _) -> true;
data_list([H | T], D) -> data(H, D) andalso data_list(T, D);
data_list(_, _) -> false.

log(Fmt, Args) ->
    io:format(standard_error, "lib_chan_port: " ++ Fmt ++ "~n", Args).

snippet(T) ->
    io_lib:format("~tp", [T], [{chars_limit, 200}]).

%% Every atom of the protocol, named here so that the node knows them once this module
%% is loaded and binary_to_term(B, [safe]) decodes the server's frames.
known_atoms() ->
    [hello, open, chan, call, closed, send, reply, error, close, chan_closed,
     peer, user, session, true, false, undefined, ok,
     no_reply, handler_crashed, bad_request, bad_term, timeout, atom_limit].
