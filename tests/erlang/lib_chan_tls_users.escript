#!/usr/bin/env escript
%% Named-user logins of clients/erlang/lib_chan_tls.erl (compiled into BEAM_DIR) against
%% a lib_chan-rs server, for tests/erlang_users.rs.
%%
%% Usage: escript lib_chan_tls_users.escript BEAM_DIR HOST PORT DIR PASSWORD
%%   DIR holds ca.pem (the server's CA), alice-ed25519.key (alice's registered key, a
%%   PKCS#8 PEM file of mode 0600), alice-ed25519.seed (the same key's 32-byte seed in
%%   hex), other-ed25519.key (a key registered for no one), alice-cert.pem and
%%   alice-cert.key (alice's pinned client certificate), mallory-cert.pem and
%%   mallory-cert.key (a certificate pinned for no one). PASSWORD is alice's password.
%% Prints one line per step; any mismatch crashes the script (non-zero exit).
-mode(compile).

main([BeamDir, Host, PortS, Dir, Password]) ->
    true = code:add_patha(BeamDir),
    {module, lib_chan_tls} = code:ensure_loaded(lib_chan_tls),
    Port = list_to_integer(PortS),
    F = fun(Name) -> filename:join(Dir, Name) end,
    Ca = [{cacertfile, F("ca.pem")}],
    Seed = binary:decode_hex(list_to_binary(string:trim(read(F("alice-ed25519.seed"))))),
    32 = byte_size(Seed),
    AliceCert = [{certfile, F("alice-cert.pem")}, {keyfile, F("alice-cert.key")}],
    MalloryCert = [{certfile, F("mallory-cert.pem")}, {keyfile, F("mallory-cert.key")}],
    Connect = fun(Service, Pw, Opts) ->
                      lib_chan_tls:connect(Host, Port, Service, Pw, "", Opts ++ Ca)
              end,

    %% Every credential kind: the seed session, and alice in a version 2 welcome.
    Logins = [{"user password option", "ignored", [{user, alice}, {password, Password}]},
              {"user password argument", Password, [{user, "alice"}]},
              {"key file", "",
               [{user, <<"alice">>}, {ed25519_key, F("alice-ed25519.key")}]},
              {"raw key", "", [{user, alice}, {ed25519_key, {raw, Seed}}]},
              {"certificate", "", [{user, alice}, certificate | AliceCert]}],
    [begin
         {ok, Pid} = Connect(nameServer, Pw, Opts),
         {ok, #{protocol := 2, user := <<"alice">>}} = lib_chan_tls:welcome(Pid),
         seed_session(Pid),
         ok = lib_chan_tls:disconnect(Pid),
         step(io_lib:format("~s: seed session as alice", [What]))
     end || {What, Pw, Opts} <- Logins],

    %% {certificate, true} is certificate.
    {ok, C2} = Connect(nameServer, "", [{user, alice}, {certificate, true} | AliceCert]),
    {ok, #{user := <<"alice">>}} = lib_chan_tls:welcome(C2),
    ok = lib_chan_tls:disconnect(C2),
    step("certificate as {certificate, true}"),

    %% The book's login is unchanged: protocol 1, no user.
    {ok, V1} = Connect(nameServer, "ABXy45", []),
    {ok, Welcome1} = lib_chan_tls:welcome(V1),
    #{protocol := 1} = Welcome1,
    false = maps:is_key(user, Welcome1),
    {ok, "writing a book"} = lib_chan_tls:rpc(V1, {lookup, joe}),
    ok = lib_chan_tls:disconnect(V1),
    step("service password: protocol 1, no user"),

    %% Refusals, all {error, auth_failed}.
    {error, auth_failed} = Connect(nameServer, "", [{user, alice}, {password, "wrong"}]),
    {error, auth_failed} = Connect(nameServer, "wrong", [{user, alice}]),
    step("wrong password refused"),
    {error, auth_failed} =
        Connect(nameServer, "", [{user, alice}, {ed25519_key, F("other-ed25519.key")}]),
    Stranger = crypto:strong_rand_bytes(32),
    {error, auth_failed} =
        Connect(nameServer, "", [{user, alice}, {ed25519_key, {raw, Stranger}}]),
    step("unregistered key refused"),
    {error, auth_failed} = Connect(nameServer, "", [{user, alice}, certificate]),
    step("certificate login without a certificate refused"),
    {error, auth_failed} =
        Connect(nameServer, "", [{user, alice}, certificate | MalloryCert]),
    step("certificate not pinned for the user refused"),
    {error, auth_failed} = Connect(echo, "", [{user, alice}, {password, Password}]),
    step("service not allowed for the user refused"),
    {error, auth_failed} = Connect(nameServer, "", [{user, carol}, {password, Password}]),
    step("unknown user refused"),

    %% Options that cannot work are refused before anything is sent.
    {error, {bad_option, {ed25519_key, needs_user}}} =
        Connect(nameServer, "", [{ed25519_key, {raw, Seed}}]),
    {error, {bad_option, {certificate, needs_user}}} =
        Connect(nameServer, "", [certificate]),
    {error, {bad_option, {several_credentials, [password, ed25519_key]}}} =
        Connect(nameServer, "",
                [{user, alice}, {password, Password}, {ed25519_key, {raw, Seed}}]),
    {error, {bad_option, ed25519_key}} =
        Connect(nameServer, "", [{user, alice}, {ed25519_key, {raw, <<1, 2, 3>>}}]),
    {error, {bad_option, {user, <<>>}}} = Connect(nameServer, "", [{user, <<>>}]),
    TooLong = binary:copy(<<"a">>, 65),
    {error, {bad_option, {user, TooLong}}} = Connect(nameServer, "", [{user, TooLong}]),
    {error, {bad_option, password}} =
        Connect(nameServer, "", [{user, alice}, {password, 42}]),
    Missing = F("no-such.key"),
    {error, {key_file, Missing, enoent}} =
        Connect(nameServer, "", [{user, alice}, {ed25519_key, Missing}]),
    %% A key file that others may read is refused, as ssh refuses it.
    Open = F("open-ed25519.key"),
    {ok, _} = file:copy(F("alice-ed25519.key"), Open),
    ok = file:change_mode(Open, 8#644),
    {error, {key_file, Open, {mode, 8#644}}} =
        Connect(nameServer, "", [{user, alice}, {ed25519_key, Open}]),
    NotKey = F("not-a-key.pem"),
    {ok, _} = file:copy(F("ca.pem"), NotKey),
    ok = file:change_mode(NotKey, 8#600),
    {error, {key_file, NotKey, not_ed25519}} =
        Connect(nameServer, "", [{user, alice}, {ed25519_key, NotKey}]),
    step("bad options refused locally"),
    io:format("users ok~n"),
    halt(0);
main(_) ->
    io:format(standard_error,
              "usage: lib_chan_tls_users.escript BEAM_DIR HOST PORT DIR PASSWORD~n", []),
    halt(2).

step(Name) -> io:format("~s~n", [Name]).

read(File) ->
    {ok, B} = file:read_file(File),
    binary_to_list(B).

seed_session(Pid) ->
    lib_chan_tls:cast(Pid, {store, joe, "writing a book"}),
    {ok, "writing a book"} = lib_chan_tls:rpc(Pid, {lookup, joe}),
    undefined = lib_chan_tls:rpc(Pid, {lookup, jim}).
