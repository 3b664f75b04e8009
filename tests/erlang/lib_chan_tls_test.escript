#!/usr/bin/env escript
%% Drives clients/erlang/lib_chan_tls.erl (compiled into BEAM_DIR) against a lib_chan-rs
%% server, one scenario per run, for tests/erlang_module.rs.
%%
%% Usage: escript lib_chan_tls_test.escript BEAM_DIR HOST PORT CERT_DIR SCENARIO [ARG]
%%   CERT_DIR holds ca.pem (and server.pem, server.key for the scripted server).
%%   seed           the book's session, errors, pipelined calls from many processes
%%   push           watch/store pushes, mod_echo, the server closing the channel
%%   unknown_atoms  ARG is an atom name this node never saw: prints "watching", then
%%                  expects the value the test stores under joe to name it
%%   lenient        a scripted server whose welcome and replies name unknown atoms
%%   session        {session, new}, a connection lost without close, {session, Id}
%%                  resuming it with its owner => session name, close ending it
%% Prints one line per step; any mismatch crashes the script (non-zero exit).
-mode(compile).

main([BeamDir, Host, PortS, CertDir, Scenario | Rest]) ->
    true = code:add_patha(BeamDir),
    {module, lib_chan_tls} = code:ensure_loaded(lib_chan_tls),
    Port = list_to_integer(PortS),
    Ca = filename:join(CertDir, "ca.pem"),
    Opts = [{cacertfile, Ca}],
    case Scenario of
        "seed" -> seed(Host, Port, Opts, CertDir);
        "push" -> push(Host, Port, Opts);
        "unknown_atoms" -> unknown_atoms(Host, Port, Opts, hd(Rest));
        "lenient" -> lenient(CertDir);
        "session" -> session(Host, Port, Opts)
    end,
    io:format("~s ok~n", [Scenario]),
    halt(0);
main(_) ->
    io:format(standard_error,
              "usage: lib_chan_tls_test.escript BEAM_DIR HOST PORT CERT_DIR SCENARIO [ARG]~n", []),
    halt(2).

step(Name) -> io:format("~s~n", [Name]).

session(Host, Port, Opts) ->
    A = connect(Host, Port, nameServer, [{session, new}, {grace, 3000} | Opts]),
    {ok, #{protocol := 2, session := Id, grace := 3000}} = lib_chan_tls:welcome(A),
    true = is_binary(Id) andalso byte_size(Id) >= 16,
    true = lib_chan_tls:rpc(A, {store, lease, erlang, #{owner => session}}),
    step("session started"),
    %% The connection is lost without close: the channel process dies.
    exit(A, kill),
    timer:sleep(300),
    B = connect(Host, Port, nameServer, [{session, Id} | Opts]),
    {ok, #{session := Id}} = lib_chan_tls:welcome(B),
    {ok, erlang} = lib_chan_tls:rpc(B, {lookup, lease}),
    step("session resumed"),
    ok = lib_chan_tls:disconnect(B),
    C = connect(Host, Port, nameServer, Opts),
    {ok, Welcome} = lib_chan_tls:welcome(C),
    false = maps:is_key(session, Welcome),
    undefined = wait_gone(C, lease, 50),
    step("close ended the session"),
    ok = lib_chan_tls:disconnect(C).

wait_gone(_Pid, _Key, 0) -> still_there;
wait_gone(Pid, Key, N) ->
    case lib_chan_tls:rpc(Pid, {lookup, Key}) of
        undefined -> undefined;
        _ -> timer:sleep(50), wait_gone(Pid, Key, N - 1)
    end.

connect(Host, Port, Service, Opts) ->
    {ok, Pid} = lib_chan_tls:connect(Host, Port, Service, "ABXy45", "", Opts),
    Pid.

seed(Host, Port, Opts, CertDir) ->
    %% Exactly the book's calls, only the module name differs; the CA comes from
    %% LIB_CHAN_CA, which the test sets.
    {ok, Pid} = lib_chan_tls:connect(Host, Port, nameServer, "ABXy45", ""),
    lib_chan_tls:cast(Pid, {store, joe, "writing a book"}),
    {ok, "writing a book"} = lib_chan_tls:rpc(Pid, {lookup, joe}),
    undefined = lib_chan_tls:rpc(Pid, {lookup, jim}),
    step("seed session"),

    %% Calls from 50 processes at once on one channel, each matched to its own reply.
    Self = self(),
    Callers = [spawn_link(fun() ->
                                  K = {key, I},
                                  true = lib_chan_tls:rpc(Pid, {store, K, I}),
                                  Self ! {done, I, lib_chan_tls:rpc(Pid, {lookup, K}, 5000)}
                          end) || I <- lists:seq(1, 50)],
    [receive {done, I, R} -> {ok, I} = R after 10000 -> error({no_reply, I}) end
     || I <- lists:seq(1, length(Callers))],
    step("50 concurrent callers"),

    %% Errors: the service's, and terms that cannot cross the wire (nothing is sent, the
    %% channel stays open).
    {error, {bad_request, {frobnicate}}} = lib_chan_tls:rpc(Pid, {frobnicate}),
    {error, {bad_term, {not_data, pid}}} = lib_chan_tls:rpc(Pid, {store, self(), 1}),
    {error, {bad_term, improper_list}} = lib_chan_tls:rpc(Pid, {lookup, [a | b]}),
    {error, {too_large, _, 1048576}} =
        lib_chan_tls:rpc(Pid, {lookup, binary:copy(<<"x">>, 1048576)}),
    {ok, "writing a book"} = lib_chan_tls:rpc(Pid, {lookup, joe}),
    step("call errors"),

    {error, auth_failed} = lib_chan_tls:connect(Host, Port, nameServer, "wrong", "", Opts),
    {error, auth_failed} = lib_chan_tls:connect(Host, Port, noSuchService, "ABXy45", "", Opts),
    %% The certificate is for localhost and 127.0.0.1, not for "gandalf".
    {error, {tls, {tls_alert, {handshake_failure, NameMsg}}}} =
        lib_chan_tls:connect(Host, Port, nameServer, "ABXy45", "",
                             [{server_name_indication, "gandalf"} | Opts]),
    true = string:find(NameMsg, "hostname_check_failed") =/= nomatch,
    %% A CA that did not sign the server's certificate: the system's CAs.
    {error, {tls, {tls_alert, {unknown_ca, _}}}} =
        lib_chan_tls:connect(Host, Port, nameServer, "ABXy45", "",
                             [{cacerts, public_key:cacerts_get()}]),
    {ok, Closed} = gen_tcp:listen(0, []),
    {ok, FreePort} = inet:port(Closed),
    ok = gen_tcp:close(Closed),
    {error, econnrefused} = lib_chan_tls:connect(Host, FreePort, nameServer, "ABXy45", "", Opts),
    step("connect errors"),

    %% Without LIB_CHAN_CA, the CA is ca.pem in the data directory ($LIB_CHAN_HOME).
    true = os:unsetenv("LIB_CHAN_CA"),
    true = os:putenv("LIB_CHAN_HOME", CertDir),
    {ok, Pid2} = lib_chan_tls:connect(Host, Port, nameServer, "ABXy45", ""),
    {ok, "writing a book"} = lib_chan_tls:rpc(Pid2, {lookup, joe}),
    ok = lib_chan_tls:disconnect(Pid2),
    step("default CA from the data directory"),

    %% disconnect: the process ends, no {chan_closed, Pid} (as in the book), calls fail.
    Mon = erlang:monitor(process, Pid),
    ok = lib_chan_tls:disconnect(Pid),
    receive {'DOWN', Mon, process, Pid, normal} -> ok after 5000 -> error(not_down) end,
    receive {chan_closed, Pid} = M -> error({unexpected, M}) after 200 -> ok end,
    {error, closed} = lib_chan_tls:rpc(Pid, {lookup, joe}),
    ok = lib_chan_tls:cast(Pid, {lookup, joe}),
    ok = lib_chan_tls:disconnect(Pid),
    step("disconnect").

push(Host, Port, Opts) ->
    %% The name server's watch: a store from another connection is pushed to the owner.
    A = connect(Host, Port, nameServer, Opts),
    B = connect(Host, Port, nameServer, Opts),
    true = lib_chan_tls:rpc(A, {watch, joe}),
    true = lib_chan_tls:rpc(B, {store, joe, "writing a book"}),
    receive {chan, A, {changed, joe, {ok, "writing a book"}}} -> ok
    after 5000 -> error(no_push)
    end,
    lib_chan_tls:cast(B, {store, joe, "another book"}),
    receive {chan, A, {changed, joe, {ok, "another book"}}} -> ok
    after 5000 -> error(no_push_after_cast)
    end,
    true = lib_chan_tls:rpc(B, {delete, joe}),
    receive {chan, A, {changed, joe, undefined}} -> ok after 5000 -> error(no_delete_push) end,
    step("watch pushes"),

    %% The book's lib_chan style: cast, then the service's answer arrives as a message.
    lib_chan_tls:cast(A, {lookup, jim}),
    receive {chan, A, undefined} -> ok after 5000 -> error(no_lookup_answer) end,
    step("send answered by send"),

    %% mod_echo: every {send, X} comes back as {send, X}; raw MM ! {send, X} works too.
    E = connect(Host, Port, echo, Opts),
    lib_chan_tls:cast(E, {hello, [1, 2.5, <<"bin">>, #{k => v}]}),
    receive {chan, E, {hello, [1, 2.5, <<"bin">>, #{k := v}]}} -> ok
    after 5000 -> error(no_echo)
    end,
    E ! {send, raw},
    receive {chan, E, raw} -> ok after 5000 -> error(no_raw_echo) end,
    {x, 1} = lib_chan_tls:rpc(E, {x, 1}),
    step("echo"),

    %% The service closes the channel (mod_test's close call, which it leaves
    %% unanswered): the call fails, the owner gets {chan_closed, Pid}, and the process
    %% exits {shutdown, Why}.
    T = connect(Host, Port, test, Opts),
    ok = lib_chan_tls:rpc(T, {push, pushed_first}),
    receive {chan, T, pushed_first} -> ok after 5000 -> error(no_test_push) end,
    TMon = erlang:monitor(process, T),
    {error, Unanswered} = lib_chan_tls:rpc(T, close),
    true = lists:member(Unanswered, [closed, no_reply]),
    receive {chan_closed, T} -> ok after 5000 -> error(no_chan_closed) end,
    receive {'DOWN', TMon, process, T, {shutdown, closed_by_server}} -> ok
    after 5000 -> error(no_down)
    end,
    step("closed by the service"),

    %% The owner dies: the channel closes and the service is told.
    Parent = self(),
    Owner = spawn(fun() -> Parent ! {chan, connect(Host, Port, echo, Opts)},
                           receive stop -> ok end
                  end),
    O = receive {chan, P} when is_pid(P) -> P after 10000 -> error(no_owner_chan) end,
    OMon = erlang:monitor(process, O),
    Owner ! stop,
    receive {'DOWN', OMon, process, O, normal} -> ok after 5000 -> error(owner_chan_alive) end,
    step("owner exit closes"),
    [ok = lib_chan_tls:disconnect(P) || P <- [A, B, E]].

unknown_atoms(Host, Port, Opts, Name) ->
    W = connect(Host, Port, nameServer, Opts),
    true = lib_chan_tls:rpc(W, {watch, joe}),
    not_an_atom = existing_atom(Name),
    step("watching"),
    %% The test now stores {joe, {made_elsewhere, Name}} from Rust.
    Bin = receive {chan, W, {unknown_atoms, B}} when is_binary(B) -> B
          after 10000 -> error(no_push)
          end,
    not_an_atom = existing_atom(Name),
    {error, {unknown_atoms, Bin2}} = lib_chan_tls:rpc(W, {lookup, joe}),
    not_an_atom = existing_atom(Name),
    %% The channel is still fine, and known atoms decode as usual.
    true = lib_chan_tls:rpc(W, {store, jim, plain}),
    {ok, plain} = lib_chan_tls:rpc(W, {lookup, jim}),
    step("unknown atoms not created"),
    %% The program may decide to trust it.
    {changed, joe, {ok, {made_elsewhere, A}}} = binary_to_term(Bin),
    {ok, {made_elsewhere, A}} = binary_to_term(Bin2),
    Name = atom_to_list(A),
    ok = lib_chan_tls:disconnect(W),
    %% With {atoms, create}, the same value decodes at once.
    C = connect(Host, Port, nameServer, [{atoms, create} | Opts]),
    {ok, {made_elsewhere, A}} = lib_chan_tls:rpc(C, {lookup, joe}),
    ok = lib_chan_tls:disconnect(C),
    step("decoded on request").

existing_atom(Name) ->
    try list_to_existing_atom(Name) of
        A -> {exists, A}
    catch
        error:badarg -> not_an_atom
    end.

%% A scripted server whose frames name atoms this node does not know. The frames are
%% written byte by byte, so that the atoms never exist here.
lenient(CertDir) ->
    {ok, _} = application:ensure_all_started(ssl),
    {ok, L} = ssl:listen(0, [binary, {packet, 4}, {active, false}, {reuseaddr, true},
                             {certfile, filename:join(CertDir, "server.pem")},
                             {keyfile, filename:join(CertDir, "server.key")}]),
    {ok, {_, Port}} = ssl:sockname(L),
    Unknown = "zz_lenient_unknown_atom",
    not_an_atom = existing_atom(Unknown),
    UAtom = <<119, (length(Unknown)), (list_to_binary(Unknown))/binary>>,
    Atom = fun(A) -> N = atom_to_binary(A), <<119, (byte_size(N)), N/binary>> end,
    Int = fun(I) -> <<98, I:32>> end,
    Parent = self(),
    spawn_link(fun() ->
        {ok, S0} = ssl:transport_accept(L, 10000),
        {ok, S} = ssl:handshake(S0, 10000),
        {ok, _Hello} = ssl:recv(S, 0, 10000),
        %% {ok, #{protocol => 1, max_frame => 65536, server => <<"x">>, Unknown => 7}}
        ok = ssl:send(S, <<131, 104, 2, (Atom(ok))/binary, 116, 4:32,
                           (Atom(protocol))/binary, (Int(1))/binary,
                           (Atom(max_frame))/binary, (Int(65536))/binary,
                           (Atom(server))/binary, 109, 1:32, "x",
                           UAtom/binary, (Int(7))/binary>>),
        {ok, Call} = ssl:recv(S, 0, 10000),
        {call, Ref, hello} = binary_to_term(Call),
        %% A push, then the reply {reply, Ref, {Unknown}}.
        ok = ssl:send(S, <<131, 104, 2, (Atom(send))/binary, 104, 1, UAtom/binary>>),
        ok = ssl:send(S, <<131, 104, 3, (Atom(reply))/binary, (Int(Ref))/binary,
                           104, 1, UAtom/binary>>),
        %% A frame that is not a term at all ends the channel.
        {ok, _} = ssl:recv(S, 0, 10000),
        ok = ssl:send(S, <<131, 88, 1, 2, 3>>),
        Parent ! served,
        receive stop -> ok end
    end),
    {ok, Pid} = lib_chan_tls:connect("localhost", Port, svc, "pw", "",
                                     [{cacertfile, filename:join(CertDir, "ca.pem")}]),
    step("welcome with an unknown key accepted"),
    {error, {unknown_atoms, Reply}} = lib_chan_tls:rpc(Pid, hello),
    Push = receive {chan, Pid, {unknown_atoms, P}} -> P after 5000 -> error(no_push) end,
    not_an_atom = existing_atom(Unknown),
    <<131, 104, 1, 119, _/binary>> = Reply,
    Reply = Push,
    step("reply and push kept undecoded"),
    Mon = erlang:monitor(process, Pid),
    lib_chan_tls:cast(Pid, next),
    receive {chan_closed, Pid} -> ok after 5000 -> error(no_chan_closed) end,
    receive {'DOWN', Mon, process, Pid, {shutdown, {protocol, bad_term}}} -> ok
    after 5000 -> error(no_down)
    end,
    receive served -> ok after 5000 -> error(not_served) end,
    not_an_atom = existing_atom(Unknown),
    step("a bad frame closes the channel").
