%% lib_chan_tls: the client side of Joe Armstrong's lib_chan (Programming Erlang), over
%% the TLS protocol of lib_chan-rs (PROTOCOL.md): Erlang terms in {packet, 4} frames.
%%
%% It keeps the book's API, so an existing lib_chan client switches by changing the
%% module name:
%%
%%   {ok, Pid} = lib_chan_tls:connect("localhost", 1234, nameServer, "ABXy45", ""),
%%   lib_chan_tls:cast(Pid, {store, joe, "writing a book"}),
%%   {ok, "writing a book"} = lib_chan_tls:rpc(Pid, {lookup, joe}),
%%   undefined = lib_chan_tls:rpc(Pid, {lookup, jim}),
%%   lib_chan_tls:disconnect(Pid).
%%
%% API
%%   connect(Host, Port, Service, Password, ArgsC) -> {ok, Pid} | {error, Why}
%%   connect(Host, Port, Service, Password, ArgsC, Options) -> {ok, Pid} | {error, Why}
%%       Opens TLS, sends {start_service, Service, Password, ArgsC} and waits for the
%%       welcome. Why is auth_failed (unknown service or wrong password), busy, timeout,
%%       bad_request, {tls, Reason} (certificate refused, TLS alert, bad TLS option), a
%%       socket error such as econnrefused or nxdomain, or {protocol, What}. With the
%%       option {user, Name} it logs in as a named user instead (see "Named users"
%%       below); then Why may also be {bad_option, What} or {key_file, File, Reason}.
%%   welcome(Pid) -> {ok, Welcome} | {error, closed}
%%       The server's welcome map, with the keys this node knows: protocol (1 after a
%%       login with the service password, 2 after a named user's), max_frame, server,
%%       after a named user's login user => NameBin, and with {session, _} session =>
%%       IdBin and grace => Ms.
%%   cast(Pid, Term) -> ok                    one-way: {send, Term}
%%   rpc(Pid, Term) -> Reply | {error, Why}   rpc(Pid, Term, 30000)
%%   rpc(Pid, Term, Timeout) -> Reply | {error, Why}
%%       Sends {call, Ref, Term} and returns Y of {reply, Ref, Y}; Ref is a number the
%%       channel picks, so calls from many processes may be outstanding at once and a
%%       push is never taken for a reply. {error, Ref, R} from the server returns
%%       {error, R} (e.g. {error, {bad_request, Term}}); {error, timeout} when no reply
%%       came within Timeout (a late reply is dropped); {error, closed} when the channel
%%       is closed or closes first; {error, {too_large, Bytes, MaxFrame}} and
%%       {error, {bad_term, Why}} for a term that cannot be sent (nothing is sent).
%%   disconnect(Pid) -> ok
%%       Sends close (the service sees lib_chan's {chan_closed, MM}), waits up to 2 s for
%%       the server to close, then ends. Like the book's, it sends no {chan_closed, Pid}.
%%
%% Messages to the owner (the process that called connect):
%%   {chan, Pid, Msg}     the service sent Msg on its own ({send, Msg} on the wire)
%%   {chan_closed, Pid}   the channel ended: the service or server closed it, the
%%                        connection was lost, or the server sent {error, Reason}. Pid
%%                        exits with {shutdown, Why}: monitor it to learn Why.
%% The book's raw messages work too: Pid ! {send, Term} is cast/2, Pid ! close is
%% disconnect/1 without the wait. When the owner dies the channel closes.
%%
%% Options (connect/6): any ssl client option, plus
%%   {timeout, Ms}          TCP + TLS + start_service, default 10000
%%   {atoms, existing | create}
%%                          see "Atoms" below; default existing
%%   {user, Name}           log in as the named user Name (an atom, a string or a
%%                          binary: 1 to 64 bytes of UTF-8), with one of the
%%                          credentials below (PROTOCOL.md section 4.1)
%%   {password, P}          with {user, Name}: the user's own password (a string or a
%%                          binary)
%%   {ed25519_key, File}    with {user, Name}: the user's Ed25519 private key, a PKCS#8
%%                          PEM file ("BEGIN PRIVATE KEY", as `lib_chan keygen` and
%%                          `openssl genpkey -algorithm ed25519` write it) that only
%%                          its owner may read (mode 0600 or stricter, as ssh wants)
%%   {ed25519_key, {raw, Seed}}
%%                          the same with the key's 32-byte seed (what crypto calls
%%                          the Ed25519 private key)
%%   {session, new | Id}    ask for a session (PROTOCOL.md section 8): new starts one,
%%                          Id (a binary from an earlier welcome's session) resumes it;
%%                          the welcome then holds session => Id and grace => Ms. A
%%                          resume the server cannot honour gets a new Id: compare.
%%                          This module keeps one connection per Pid: when it is lost
%%                          the owner gets {chan_closed, Pid}, and may connect again
%%                          with {session, Id} within the grace to keep what belongs
%%                          to the session (a name server's #{owner => session} names);
%%                          disconnect/1 sends close, which ends the session.
%%   {grace, Ms}            with {session, _}: how long the session may outlive its
%%                          connection; the server clamps it (10 s by default)
%%   certificate | {certificate, true}
%%                          with {user, Name}: the TLS client certificate that this
%%                          connection presents, given with ssl's own {certfile, F}
%%                          and {keyfile, F} (or cert/key, certs_keys)
%%
%% Named users. {user, Name} replaces the service password by the user's credential:
%%   {password, P}          sends {user, NameBin, {password, PBin}}
%%   {ed25519_key, _}       asks for a challenge ({challenge, Ref}, answered by
%%                          {challenge, Ref, Nonce}) and sends {user, NameBin,
%%                          {ed25519, Sig}}, Sig signing the nonce, the SHA-256 of the
%%                          server's certificate as received on this connection, the
%%                          user and the service (PROTOCOL.md section 4.2): the
%%                          signature is good for this connection only
%%   certificate            sends {user, NameBin, certificate}
%%   none of these          the Password argument is the user's own password, as if
%%                          {password, Password} were given
%% With a credential option the Password argument is ignored (pass ""). At most one
%% credential option may be given, and only with {user, Name}: anything else is
%% {error, {bad_option, What}}, before anything is sent. {password, P} is the user's
%% only with {user, Name} and without certificate; otherwise it goes to ssl (the
%% password of an encrypted keyfile), as before. A refused login is
%% {error, auth_failed} whatever the cause (unknown user, wrong credential, a
%% certificate login without a certificate, a service the user may not start). A key
%% that cannot be used is {error, {key_file, File, Reason}}: Reason is a file error
%% such as enoent, {mode, Mode} for a file that group or others may access, or
%% not_ed25519; a bad raw seed is {error, {bad_option, ed25519_key}}. Errors never show
%% a password or a key.
%%
%%   {ok, Pid} = lib_chan_tls:connect("localhost", 1234, nameServer, "", "",
%%                                    [{user, alice},
%%                                     {ed25519_key, "/home/alice/.lib_chan/alice.key"}]),
%%   {ok, #{user := <<"alice">>}} = lib_chan_tls:welcome(Pid),
%%
%% Our own socket options (binary, {packet, 4}, active, packet_size) cannot be changed.
%% Trust: {verify, verify_peer} is the default. Without cacertfile or cacerts, the CA is
%% the file named by the environment variable LIB_CHAN_CA, else ca.pem in the lib_chan
%% data directory ($LIB_CHAN_HOME, else ~/.lib_chan; where `lib_chan serve` keeps its
%% development CA), else the system's trusted CAs (public_key:cacerts_get/0). The host
%% name dialled is checked in the server's certificate; pass
%% {server_name_indication, Name} to check another name (e.g. dial an address, check
%% "gandalf"). {verify, verify_none} works but logs a warning on every connect.
%%
%% Atoms. binary_to_term(B, [safe]) refuses atoms this node does not know, and plain
%% binary_to_term/1 would create them: atoms are never garbage collected, and what the
%% server sends includes data from other clients (a name server's values, its watch
%% notifications), so anyone with the service password could fill the atom table and
%% bring the node down. So, by default ({atoms, existing}):
%%   - Frames are bounded before they are decoded (packet_size: 64 KiB until the
%%     welcome, then the server's max_frame but at least 1 MiB), then decoded with
%%     binary_to_term(B, [safe]).
%%   - Every atom of the protocol (message tags, welcome keys, error reasons) and of the
%%     built-in services' answers is named in this module (known_atoms/0, exported so
%%     that it is kept and can be checked), so protocol
%%     frames always decode, whatever the node has loaded. Keys of the welcome map that
%%     the node does not know are ignored (clients must ignore unknown keys).
%%   - A reply or push holding an atom the node does not know is not decoded: the
%%     envelope ({reply, Ref, _}, {send, _}, ...) is read by a small checker of the
%%     protocol's term format, and the payload is handed over undecoded, in external
%%     term format: rpc returns {error, {unknown_atoms, Bin}}, and a push arrives as
%%     {chan, Pid, {unknown_atoms, Bin}}. binary_to_term(Bin) decodes it if the program
%%     decides to trust it. Atoms the program itself uses (in its code) are known, so
%%     the usual answers decode normally.
%% {atoms, create} decodes everything with binary_to_term/1: for programs that trust
%% the server and every client of the service.
%%
%% Sending: terms are checked against PROTOCOL.md's term format before they are sent
%% (pids, references, funs, ports, bit strings and improper lists cannot cross the wire,
%% and the server would close the connection on them) and against the server's
%% max_frame. A cast that fails the check is dropped with a logged warning.

-module(lib_chan_tls).
-behaviour(gen_server).

-include_lib("kernel/include/file.hrl").

-export([connect/5, connect/6, cast/2, rpc/2, rpc/3, disconnect/1, welcome/1,
         known_atoms/0]).
%% Internal: proc_lib start and gen_server callbacks.
-export([init_it/7, init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-define(CONNECT_TIMEOUT, 10000).
-define(RPC_TIMEOUT, 30000).
-define(CLOSE_TIMEOUT, 2000).
%% The client's first frame may be at most 4 KiB (PROTOCOL.md section 2).
-define(HANDSHAKE_MAX_SEND, 4096).
%% The largest frame accepted before the welcome; a welcome is a small map.
-define(HANDSHAKE_MAX_RECV, 65536).
%% The least receive limit after the welcome, as in the Rust client.
-define(MIN_MAX_RECV, 1048576).
%% How many frames the socket delivers before it must be re-armed ({active, N}).
-define(ACTIVE_N, 32).
%% The longest user name, in UTF-8 bytes (PROTOCOL.md section 4.1).
-define(MAX_USER_NAME, 64).
%% What a key login signs starts with this, its NUL byte included (section 4.2).
-define(CHALLENGE_CONTEXT, <<"lib_chan-ed25519-v2", 0>>).
%% The Ref of our one challenge per connection.
-define(CHALLENGE_REF, 1).
%% The DER prefix of a PKCS#8 v1 Ed25519 private key; the 32-byte seed follows.
-define(PKCS8_ED25519_PREFIX, 48, 46, 2, 1, 0, 48, 5, 6, 3, 43, 101, 112, 4, 34, 4, 32).
%% id-Ed25519, 1.3.101.112 (RFC 8410).
-define(ID_ED25519, {1, 3, 101, 112}).

-record(st, {
    sock,                   %% the ssl socket
    owner,                  %% the process that connected: pushes go there
    owner_mon,              %% its monitor
    max_frame,              %% the server's limit for our frames
    welcome = #{},          %% the server's welcome map (known keys)
    atoms,                  %% existing | create
    next_ref = 1,           %% the next call's Ref
    pending = #{},          %% Ref => gen_server:from() of the caller waiting
    closing = false         %% false | {From | none, TimerRef} once we sent close
}).

%%% API

connect(Host, Port, Service, Password, ArgsC) ->
    connect(Host, Port, Service, Password, ArgsC, []).

connect(Host, Port, Service, Password, ArgsC, Options) when is_list(Options) ->
    case application:ensure_all_started(ssl) of
        {ok, _} ->
            Timeout = proplists:get_value(timeout, Options, ?CONNECT_TIMEOUT),
            %% The channel process does the whole handshake under Timeout; the margin
            %% lets it report its own, more precise, error first.
            proc_lib:start(?MODULE, init_it,
                           [self(), Host, Port, Service, Password, ArgsC, Options],
                           Timeout + 1000);
        {error, Why} ->
            {error, {tls, {ssl_not_started, Why}}}
    end.

cast(Pid, Term) ->
    gen_server:cast(Pid, {send, Term}).

rpc(Pid, Term) ->
    rpc(Pid, Term, ?RPC_TIMEOUT).

rpc(Pid, Term, Timeout) ->
    %% gen_server:call replies through an alias (OTP 24+): a reply after the timeout is
    %% dropped instead of landing in the caller's mailbox.
    try gen_server:call(Pid, {rpc, Term}, Timeout)
    catch
        exit:{timeout, _} -> {error, timeout};
        exit:{_, {gen_server, call, _}} -> {error, closed}
    end.

disconnect(Pid) ->
    try gen_server:call(Pid, disconnect, ?CLOSE_TIMEOUT + 1000)
    catch exit:_ -> ok
    end.

welcome(Pid) ->
    try gen_server:call(Pid, welcome, ?RPC_TIMEOUT)
    catch exit:_ -> {error, closed}
    end.

%%% The channel process: connect and handshake, then a gen_server.

init_it(Owner, Host, Port, Service, Password, ArgsC, Options) ->
    case handshake(Host, Port, Service, Password, ArgsC, Options) of
        {ok, St} ->
            Mon = erlang:monitor(process, Owner),
            proc_lib:init_ack({ok, self()}),
            gen_server:enter_loop(?MODULE, [], St#st{owner = Owner, owner_mon = Mon});
        {error, Why} ->
            proc_lib:init_ack({error, Why}),
            exit(normal)
    end.

handshake(Host, Port, Service, Password, ArgsC, Options) ->
    Timeout = proplists:get_value(timeout, Options, ?CONNECT_TIMEOUT),
    Deadline = erlang:monotonic_time(millisecond) + Timeout,
    Atoms = proplists:get_value(atoms, Options, existing),
    case login(Password, Options) of
        {ok, Login, Taken} ->
            handshake(Host, Port, service(Service), Login, ArgsC,
                      [O || O <- Options, not lists:member(opt_key(O), Taken)],
                      Timeout, Deadline, Atoms);
        {error, _} = E ->
            E
    end.

handshake(Host, Port, Service, Login, ArgsC, Options, Timeout, Deadline, Atoms) ->
    Hs = handshake_options(Options),
    %% The largest first frame this login sends: a key login's signature is 64 bytes.
    Biggest = hello(Service, credential(Login, <<0:512>>), ArgsC, Hs),
    case ssl_options(Options) of
        {error, _} = E ->
            E;
        _ when byte_size(Biggest) > ?HANDSHAKE_MAX_SEND ->
            {error, {too_large, byte_size(Biggest), ?HANDSHAKE_MAX_SEND}};
        {ok, SslOpts} ->
            case ssl:connect(Host, Port, SslOpts, Timeout) of
                {ok, S} ->
                    Result = start_service(S, Service, Login, {ArgsC, Hs}, Deadline, Atoms),
                    case Result of
                        {ok, _} -> ok;
                        {error, _} -> ssl:close(S)
                    end,
                    Result;
                {error, Why} ->
                    {error, connect_error(Why)}
            end
    end.

%% The start_service frame: the version 1 4-tuple unless handshake options are asked for.
hello(Service, Credential, ArgsC, Hs) when map_size(Hs) =:= 0 ->
    term_to_binary({start_service, Service, Credential, ArgsC}, [{minor_version, 2}]);
hello(Service, Credential, ArgsC, Hs) ->
    term_to_binary({start_service, Service, Credential, ArgsC, Hs}, [{minor_version, 2}]).

%% The handshake options map (PROTOCOL.md section 4.3) from {session, _} and {grace, _}.
handshake_options(Options) ->
    Session = case proplists:get_value(session, Options) of
                  new -> #{session => new};
                  Id when is_binary(Id) -> #{session => Id};
                  _ -> #{}
              end,
    case proplists:get_value(grace, Options) of
        Ms when is_integer(Ms), Ms >= 0, map_size(Session) > 0 -> Session#{grace => Ms};
        _ -> Session
    end.

%% The credential of start_service; Sig is the key login's signature.
credential({static, Credential}, _Sig) -> Credential;
credential({key, Name, _Seed}, Sig) -> {user, Name, {ed25519, Sig}}.

start_service(S, Service, Login, {ArgsC, Hs}, Deadline, Atoms) ->
    case signature(S, Service, Login, Deadline) of
        {ok, Sig} ->
            case exchange(S, hello(Service, credential(Login, Sig), ArgsC, Hs), Deadline) of
                {ok, Bin} -> welcome(S, Bin, Atoms);
                {error, _} = E -> E
            end;
        {error, _} = E ->
            E
    end.

%% One frame out, the server's one answer in, by Deadline.
exchange(S, Bin, Deadline) ->
    Left = max(0, Deadline - erlang:monotonic_time(millisecond)),
    case ssl:send(S, Bin) of
        ok ->
            case ssl:recv(S, 0, Left) of
                {ok, Answer} -> {ok, Answer};
                {error, timeout} -> {error, timeout};
                {error, closed} -> {error, {protocol, closed_without_answer}};
                {error, Why} -> {error, {tls, Why}}
            end;
        {error, Why} ->
            {error, {tls, Why}}
    end.

%% A key login: the challenge, and the signature of PROTOCOL.md section 4.2.
signature(_S, _Service, {static, _}, _Deadline) ->
    {ok, none};
signature(S, Service, {key, Name, Seed}, Deadline) ->
    Ask = term_to_binary({challenge, ?CHALLENGE_REF}, [{minor_version, 2}]),
    case exchange(S, Ask, Deadline) of
        {ok, Bin} ->
            case decode_handshake(Bin) of
                {challenge, ?CHALLENGE_REF, Nonce} when byte_size(Nonce) =:= 32 ->
                    case ssl:peercert(S) of
                        {ok, Der} ->
                            Msg = challenge_message(Nonce, crypto:hash(sha256, Der), Name,
                                                    service_bytes(Service)),
                            {ok, crypto:sign(eddsa, none, Msg, [Seed, ed25519])};
                        {error, Why} ->
                            {error, {tls, Why}}
                    end;
                {error, Reason} when is_atom(Reason) ->
                    %% busy, timeout, bad_request, ...
                    {error, Reason};
                _ ->
                    {error, {protocol, {unexpected_answer, Bin}}}
            end;
        {error, _} = E ->
            E
    end.

challenge_message(Nonce, CertHash, Name, Service) ->
    <<(?CHALLENGE_CONTEXT)/binary, Nonce:32/binary, CertHash:32/binary,
      (byte_size(Name)):16, Name/binary, (byte_size(Service)):16, Service/binary>>.

%% A frame before the welcome, or bad_answer.
decode_handshake(Bin) ->
    try binary_to_term(Bin, [safe])
    catch error:badarg -> bad_answer
    end.

welcome(S, Bin, Atoms) ->
    case decode_welcome(Bin) of
        {ok, #{protocol := P, max_frame := MaxFrame} = Welcome}
          when (P =:= 1 orelse P =:= 2), is_integer(MaxFrame), MaxFrame > 0 ->
            ok = ssl:setopts(S, [{packet_size, max(MaxFrame, ?MIN_MAX_RECV)},
                                 {active, ?ACTIVE_N}]),
            {ok, #st{sock = S, max_frame = MaxFrame, welcome = Welcome, atoms = Atoms}};
        {ok, #{protocol := P}} ->
            {error, {protocol, {version, P}}};
        {error, Reason} when is_atom(Reason) ->
            %% auth_failed, busy, timeout, bad_request, ...
            {error, Reason};
        _ ->
            {error, {protocol, {unexpected_answer, Bin}}}
    end.

%% The welcome {ok, #{...}} or a refusal {error, Reason}, keeping only known keys.
decode_welcome(Bin) ->
    try binary_to_term(Bin, [safe]) of
        {ok, Map} when is_map(Map) -> {ok, Map};
        {error, _} = E -> E;
        Other -> Other
    catch
        error:badarg -> lenient_welcome(Bin)
    end.

%% [safe] refused the welcome: a key (or value) names an atom this node does not know,
%% e.g. a key a newer server added. Keep the keys the node knows, drop the others.
lenient_welcome(<<131, 104, 2, Body/binary>>) ->
    try
        {TagB, MapB} = split(Body),
        ok = binary_to_term(<<131, TagB/binary>>, [safe]),
        <<116, N:32, Pairs/binary>> = MapB,
        {ok, known_pairs(N, Pairs, #{})}
    catch
        _:_ -> bad_welcome
    end;
lenient_welcome(_) ->
    bad_welcome.

known_pairs(0, <<>>, Acc) ->
    Acc;
known_pairs(N, Bin, Acc) ->
    {K, R1} = split(Bin),
    {V, R2} = split(R1),
    Acc1 = try
               maps:put(binary_to_term(<<131, K/binary>>, [safe]),
                        binary_to_term(<<131, V/binary>>, [safe]), Acc)
           catch
               error:badarg -> Acc
           end,
    known_pairs(N - 1, R2, Acc1).

%% The login the options ask for: {ok, Login, Taken} | {error, Why}, with Login
%% {static, Credential} or {key, NameBin, Seed}, and Taken [password] when {password, _}
%% is the user's (so not ssl's). See "Named users" above.
login(Password, Options) ->
    Cert = case proplists:get_value(certificate, Options, false) of
               true -> {ok, true};
               false -> {ok, false};
               _ -> {error, {bad_option, certificate}}
           end,
    HasKey = proplists:is_defined(ed25519_key, Options),
    case {proplists:lookup(user, Options), Cert} of
        {_, {error, _} = E} ->
            E;
        {none, {ok, true}} ->
            {error, {bad_option, {certificate, needs_user}}};
        {none, {ok, false}} when HasKey ->
            {error, {bad_option, {ed25519_key, needs_user}}};
        {none, {ok, false}} ->
            %% The book's login with the service password; {password, _} is ssl's.
            {ok, {static, password(Password)}, []};
        {{user, User}, {ok, Cert1}} ->
            %% With certificate, {password, _} is ssl's (an encrypted keyfile's).
            HasPassword = not Cert1 andalso proplists:is_defined(password, Options),
            case {user_name(User), [K || {K, true} <- [{password, HasPassword},
                                                          {ed25519_key, HasKey},
                                                          {certificate, Cert1}]]} of
                {error, _} ->
                    {error, {bad_option, {user, User}}};
                {{ok, Name}, []} ->
                    user_password(Name, Password, []);
                {{ok, Name}, [password]} ->
                    P = proplists:get_value(password, Options),
                    user_password(Name, P, [password]);
                {{ok, Name}, [ed25519_key]} ->
                    case ed25519_seed(proplists:get_value(ed25519_key, Options)) of
                        {ok, Seed} -> {ok, {key, Name, Seed}, []};
                        {error, _} = E -> E
                    end;
                {{ok, Name}, [certificate]} ->
                    {ok, {static, {user, Name, certificate}}, []};
                {{ok, _}, Several} ->
                    {error, {bad_option, {several_credentials, Several}}}
            end
    end.

user_password(Name, P, Taken) when is_binary(P); is_list(P) ->
    case unicode:characters_to_binary(P) of
        Bin when is_binary(Bin) -> {ok, {static, {user, Name, {password, Bin}}}, Taken};
        _ -> {error, {bad_option, password}}
    end;
user_password(_Name, _P, _Taken) ->
    %% Never the password itself in the error.
    {error, {bad_option, password}}.

%% {ok, NameBin} | error: 1 to ?MAX_USER_NAME bytes of UTF-8.
user_name(B) when is_boolean(B) ->
    %% A bare `user` in the options ({user, true}) names nobody.
    error;
user_name(A) when is_atom(A) ->
    user_name(atom_to_binary(A, utf8));
user_name(L) when is_list(L) ->
    case unicode:characters_to_binary(L) of
        B when is_binary(B) -> user_name(B);
        _ -> error
    end;
user_name(B) when is_binary(B), byte_size(B) >= 1, byte_size(B) =< ?MAX_USER_NAME ->
    case unicode:characters_to_binary(B) of
        B -> {ok, B};
        _ -> error
    end;
user_name(_) ->
    error.

%% The 32-byte Ed25519 seed of {ed25519_key, _}.
ed25519_seed({raw, Seed}) when is_binary(Seed), byte_size(Seed) =:= 32 ->
    {ok, Seed};
ed25519_seed({raw, _}) ->
    {error, {bad_option, ed25519_key}};
ed25519_seed(File) when is_list(File); is_binary(File) ->
    case file:read_file_info(File) of
        {ok, #file_info{mode = Mode}} when Mode band 8#077 =/= 0 ->
            {error, {key_file, File, {mode, Mode band 8#777}}};
        {ok, _} ->
            case file:read_file(File) of
                {ok, Pem} ->
                    case pem_seed(Pem) of
                        {ok, Seed} -> {ok, Seed};
                        error -> {error, {key_file, File, not_ed25519}}
                    end;
                {error, Why} ->
                    {error, {key_file, File, Why}}
            end;
        {error, Why} ->
            {error, {key_file, File, Why}}
    end;
ed25519_seed(_) ->
    {error, {bad_option, ed25519_key}}.

%% The seed in a PKCS#8 PEM private key. public_key decodes an Ed25519 PKCS#8 key to an
%% #'ECPrivateKey'{} whose privateKey is the seed and whose parameters name id-Ed25519
%% (OTP 24 and later); the DER of a PKCS#8 v1 key is read directly otherwise.
pem_seed(Pem) ->
    try public_key:pem_decode(Pem) of
        [{'PrivateKeyInfo', Der, not_encrypted} = Entry] ->
            Decoded = try public_key:pem_entry_decode(Entry)
                      catch _:_ -> undefined
                      end,
            case {Decoded, Der} of
                {Key, _} when is_tuple(Key), element(1, Key) =:= 'ECPrivateKey',
                              tuple_size(Key) >= 4,
                              element(4, Key) =:= {namedCurve, ?ID_ED25519},
                              is_binary(element(3, Key)),
                              byte_size(element(3, Key)) =:= 32 ->
                    {ok, element(3, Key)};
                {_, <<?PKCS8_ED25519_PREFIX, Seed:32/binary>>} ->
                    {ok, Seed};
                _ ->
                    error
            end;
        _ ->
            error
    catch
        _:_ -> error
    end.

service_bytes(S) when is_atom(S) -> atom_to_binary(S, utf8);
service_bytes(S) when is_binary(S) -> S.

ssl_options(Options) ->
    %% ({password, _} is taken out by the caller when it is the user's.)
    Ours = [timeout, atoms, user, ed25519_key, certificate, session, grace,
            binary, list, mode, packet, packet_size, active, header],
    User = [O || O <- Options, not lists:member(opt_key(O), Ours)],
    Verify = proplists:get_value(verify, User, verify_peer),
    Verify =:= verify_none andalso
        logger:warning("lib_chan_tls: {verify, verify_none}: the server's certificate is "
                       "NOT checked; anyone on the path can read and change this channel"),
    HasCa = lists:any(fun(O) -> lists:member(opt_key(O), [cacertfile, cacerts]) end, User),
    Trust = case {Verify, HasCa} of
                {verify_peer, false} -> default_ca();
                _ -> {ok, []}
            end,
    case Trust of
        {ok, CaOpts} ->
            {ok, [binary, {packet, 4}, {active, false}, {packet_size, ?HANDSHAKE_MAX_RECV},
                  {verify, Verify} | CaOpts ++ [O || O <- User, opt_key(O) =/= verify]]};
        {error, _} = E ->
            E
    end.

opt_key({K, _}) -> K;
opt_key(K) -> K.

%% LIB_CHAN_CA, else the data directory's ca.pem, else the system's CAs.
default_ca() ->
    case os:getenv("LIB_CHAN_CA") of
        File when is_list(File), File =/= "" ->
            {ok, [{cacertfile, File}]};
        _ ->
            DevCa = filename:join(data_dir(), "ca.pem"),
            case filelib:is_regular(DevCa) of
                true ->
                    {ok, [{cacertfile, DevCa}]};
                false ->
                    try public_key:cacerts_get() of
                        [_ | _] = Cas -> {ok, [{cacerts, Cas}]};
                        [] -> {error, {tls, {no_trusted_ca, DevCa}}}
                    catch
                        _:Why -> {error, {tls, {no_trusted_ca, DevCa, Why}}}
                    end
            end
    end.

data_dir() ->
    case os:getenv("LIB_CHAN_HOME") of
        Dir when is_list(Dir), Dir =/= "" ->
            Dir;
        _ ->
            Home = case os:getenv("HOME") of
                       H when is_list(H), H =/= "" -> H;
                       _ -> "."
                   end,
            filename:join(Home, ".lib_chan")
    end.

connect_error(timeout) -> timeout;
connect_error(Why) when is_atom(Why) ->
    %% inet's posix errors (econnrefused, nxdomain, ...) pass through as the book's do;
    %% other atoms come from ssl.
    case inet:format_error(Why) of
        "unknown POSIX error" ++ _ -> {tls, Why};
        _ -> Why
    end;
connect_error(Why) -> {tls, Why}.

service(S) when is_atom(S); is_binary(S) -> S;
service(S) when is_list(S) -> unicode:characters_to_binary(S).

password(P) when is_binary(P) -> P;
password(P) when is_list(P) -> unicode:characters_to_binary(P).

%%% gen_server callbacks (entered through gen_server:enter_loop/3)

init(_) ->
    %% Never called: the process starts in init_it/7.
    {stop, not_used}.

handle_call({rpc, _}, _From, #st{closing = {_, _}} = St) ->
    {reply, {error, closed}, St};
handle_call({rpc, Term}, From, #st{next_ref = Ref, pending = Pending} = St) ->
    case encode({call, Ref, Term}, St) of
        {ok, Bin} ->
            St1 = St#st{next_ref = Ref + 1, pending = Pending#{Ref => From}},
            case ssl:send(St#st.sock, Bin) of
                ok -> {noreply, St1};
                {error, Why} -> {stop, {shutdown, {tls, Why}}, St1}
            end;
        {error, _} = E ->
            {reply, E, St}
    end;
handle_call(disconnect, From, St) ->
    start_close(From, St);
handle_call(welcome, _From, #st{welcome = Welcome} = St) ->
    {reply, {ok, Welcome}, St};
handle_call(_, _From, St) ->
    {reply, {error, badarg}, St}.

handle_cast({send, Term}, St) ->
    send_cast(Term, St);
handle_cast(_, St) ->
    {noreply, St}.

handle_info({ssl, S, Bin}, #st{sock = S} = St) ->
    incoming(decode(Bin, St#st.atoms), St);
handle_info({ssl_passive, S}, #st{sock = S} = St) ->
    ok = ssl:setopts(S, [{active, ?ACTIVE_N}]),
    {noreply, St};
handle_info({ssl_closed, S}, #st{sock = S, closing = {_, _}} = St) ->
    {stop, normal, St};
handle_info({ssl_closed, S}, #st{sock = S} = St) ->
    {stop, {shutdown, connection_lost}, St};
handle_info({ssl_error, S, {invalid_packet, _}}, #st{sock = S} = St) ->
    %% A frame over packet_size: refused before it was buffered whole.
    {stop, {shutdown, {protocol, frame_too_large}}, St};
handle_info({ssl_error, S, Why}, #st{sock = S} = St) ->
    {stop, {shutdown, {tls, Why}}, St};
handle_info(close_timeout, St) ->
    {stop, normal, St};
handle_info({'DOWN', Mon, process, _, _}, #st{owner_mon = Mon} = St) ->
    %% The owner is gone: nobody wants this channel any more.
    start_close(none, St#st{owner = undefined});
%% The book's raw messages from the client: MM ! {send, Term}, MM ! close.
handle_info({send, Term}, St) ->
    send_cast(Term, St);
handle_info(close, St) ->
    start_close(none, St);
handle_info(_, St) ->
    {noreply, St}.

terminate(Reason, #st{sock = S, pending = Pending, owner = Owner, closing = Closing}) ->
    %% Calls still waiting will get no reply now.
    [gen_server:reply(From, {error, closed}) || From <- maps:values(Pending)],
    case Closing of
        {From, _} when From =/= none -> gen_server:reply(From, ok);
        _ -> ok
    end,
    _ = ssl:close(S),
    %% lib_chan's {chan_closed, MM}, unless the owner closed the channel itself.
    case {Reason, Closing, Owner} of
        {_, false, Pid} when is_pid(Pid) -> Pid ! {chan_closed, self()};
        _ -> ok
    end,
    ok.

%%% Internals

send_cast(_Term, #st{closing = {_, _}} = St) ->
    {noreply, St};
send_cast(Term, St) ->
    case encode({send, Term}, St) of
        {ok, Bin} ->
            case ssl:send(St#st.sock, Bin) of
                ok -> {noreply, St};
                {error, Why} -> {stop, {shutdown, {tls, Why}}, St}
            end;
        {error, Why} ->
            logger:warning("lib_chan_tls: cast not sent: ~p", [Why]),
            {noreply, St}
    end.

%% Sends close, then waits (at most ?CLOSE_TIMEOUT) for the server to close its side;
%% replies already on their way are still delivered meanwhile.
start_close(From, #st{closing = {_, _}} = St) ->
    case From of
        none -> {noreply, St};
        _ -> {reply, ok, St}
    end;
start_close(From, #st{sock = S} = St) ->
    _ = ssl:send(S, term_to_binary(close)),
    Timer = erlang:send_after(?CLOSE_TIMEOUT, self(), close_timeout),
    {noreply, St#st{closing = {From, Timer}}}.

incoming({ok, {send, Y}}, St) ->
    push(Y, St);
incoming({ok, {reply, Ref, Y}}, St) ->
    answer(Ref, Y, St);
incoming({ok, {error, Ref, Why}}, St) when is_integer(Ref) ->
    answer(Ref, {error, Why}, St);
incoming({ok, {pong, _}}, St) ->
    {noreply, St};
incoming({ok, close}, St) ->
    {stop, {shutdown, closed_by_server}, St};
incoming({ok, {error, Why}}, St) ->
    {stop, {shutdown, {server_error, Why}}, St};
incoming({unknown_atoms, send, Bin}, St) ->
    push({unknown_atoms, Bin}, St);
incoming({unknown_atoms, {reply, Ref}, Bin}, St) ->
    answer(Ref, {error, {unknown_atoms, Bin}}, St);
incoming({unknown_atoms, {error, Ref}, Bin}, St) ->
    answer(Ref, {error, {unknown_atoms, Bin}}, St);
incoming({unknown_atoms, error, Bin}, St) ->
    {stop, {shutdown, {server_error, {unknown_atoms, Bin}}}, St};
incoming({ok, Other}, St) ->
    {stop, {shutdown, {protocol, {unexpected, Other}}}, St};
incoming({error, Why}, St) ->
    {stop, {shutdown, {protocol, Why}}, St}.

push(Msg, #st{owner = Owner} = St) when is_pid(Owner) ->
    Owner ! {chan, self(), Msg},
    {noreply, St};
push(_Msg, St) ->
    {noreply, St}.

answer(Ref, Reply, #st{pending = Pending} = St) ->
    case maps:take(Ref, Pending) of
        {From, Rest} ->
            gen_server:reply(From, Reply),
            {noreply, St#st{pending = Rest}};
        error ->
            %% The caller gave up (timeout); the reply is dropped.
            {noreply, St}
    end.

%% One frame to send: checked against the protocol's term format and max_frame.
encode(Msg, #st{max_frame = Max}) ->
    Bin = term_to_binary(Msg, [{minor_version, 2}]),
    <<131, Body/binary>> = Bin,
    try skip(Body) of
        <<>> when byte_size(Bin) > Max -> {error, {too_large, byte_size(Bin), Max}};
        <<>> -> {ok, Bin}
    catch
        throw:{bad_term, Why} -> {error, {bad_term, Why}}
    end.

%% {ok, Term} | {unknown_atoms, Where, Bin} | {error, Why}
decode(Bin, create) ->
    try {ok, binary_to_term(Bin)}
    catch error:badarg -> {error, bad_term}
    end;
decode(Bin, existing) ->
    try {ok, binary_to_term(Bin, [safe])}
    catch error:badarg -> envelope(Bin)
    end.

%% [safe] refused the frame. If that is because the payload names atoms this node does
%% not know, read the envelope only and keep the payload in external term format.
envelope(<<131, 104, Arity, Body/binary>>) when Arity =:= 2; Arity =:= 3 ->
    try
        {TagB, R1} = split(Body),
        Tag = binary_to_term(<<131, TagB/binary>>, [safe]),
        case {Tag, Arity} of
            {send, 2} -> {unknown_atoms, send, last(R1)};
            {error, 2} -> {unknown_atoms, error, last(R1)};
            {reply, 3} -> {Ref, R2} = ref(R1), {unknown_atoms, {reply, Ref}, last(R2)};
            {error, 3} -> {Ref, R2} = ref(R1), {unknown_atoms, {error, Ref}, last(R2)}
        end
    catch
        _:_ -> {error, bad_term}
    end;
envelope(_) ->
    {error, bad_term}.

ref(Bin) ->
    {RefB, Rest} = split(Bin),
    Ref = binary_to_term(<<131, RefB/binary>>, [safe]),
    true = is_integer(Ref) andalso Ref >= 0,
    {Ref, Rest}.

%% The last element of the envelope, which must end the frame, as a term_to_binary.
last(Bin) ->
    <<>> = skip(Bin),
    <<131, Bin/binary>>.

%% {FirstTermBytes, Rest}.
split(Bin) ->
    Rest = skip(Bin),
    Size = byte_size(Bin) - byte_size(Rest),
    <<Term:Size/binary, _/binary>> = Bin,
    {Term, Rest}.

%% Skips one term in PROTOCOL.md's format (section 3: only these tags), returning the
%% bytes after it; throws {bad_term, Why} on anything else. Creates no atoms.
skip(<<97, _, R/binary>>) -> R;                              % SMALL_INTEGER
skip(<<98, _:32, R/binary>>) -> R;                           % INTEGER
skip(<<110, N, _Sign, _:N/binary, R/binary>>) when N =< 8 -> R;  % SMALL_BIG, 64-bit
skip(<<70, _:64, R/binary>>) -> R;                           % NEW_FLOAT
skip(<<119, N, _:N/binary, R/binary>>) -> R;                 % SMALL_ATOM_UTF8
skip(<<118, N:16, _:N/binary, R/binary>>) -> R;              % ATOM_UTF8
skip(<<115, N, _:N/binary, R/binary>>) -> R;                 % SMALL_ATOM
skip(<<100, N:16, _:N/binary, R/binary>>) -> R;              % ATOM
skip(<<109, N:32, _:N/binary, R/binary>>) -> R;              % BINARY
skip(<<106, R/binary>>) -> R;                                % NIL
skip(<<107, N:16, _:N/binary, R/binary>>) -> R;              % STRING
skip(<<108, N:32, R/binary>>) ->                             % LIST, proper only
    case skip_n(N, R) of
        <<106, R2/binary>> -> R2;
        _ -> throw({bad_term, improper_list})
    end;
skip(<<104, N, R/binary>>) -> skip_n(N, R);                  % SMALL_TUPLE
skip(<<105, N:32, R/binary>>) -> skip_n(N, R);               % LARGE_TUPLE
skip(<<116, N:32, R/binary>>) -> skip_n(2 * N, R);           % MAP
skip(<<110, _/binary>>) -> throw({bad_term, integer_beyond_64_bits});
skip(<<111, _/binary>>) -> throw({bad_term, integer_beyond_64_bits});
skip(<<Tag, _/binary>>) -> throw({bad_term, {not_data, tag_name(Tag)}});
skip(<<>>) -> throw({bad_term, truncated}).

skip_n(0, R) -> R;
skip_n(N, R) -> skip_n(N - 1, skip(R)).

tag_name(T) when T =:= 88; T =:= 103 -> pid;
tag_name(T) when T =:= 90; T =:= 114; T =:= 101 -> reference;
tag_name(T) when T =:= 89; T =:= 102 -> port;
tag_name(T) when T =:= 112; T =:= 113; T =:= 117 -> function;
tag_name(77) -> bit_string;
tag_name(T) -> {tag, T}.

%% Every atom of the protocol and of the built-in services' answers, named here so that
%% the node knows them once this module is loaded and [safe] decoding accepts them.
known_atoms() ->
    [ok, error, send, call, reply, ping, pong, close, start_service,
     protocol, max_frame, server,
     auth_failed, busy, timeout, bad_request, frame_too_large, bad_term, bad_message,
     slow_consumer, idle_timeout, shutdown, revoked, no_reply, handler_crashed,
     true, false, undefined, changed,
     %% Version 2: the welcome's keys, challenges and the credentials of named users.
     user, session, grace, challenge, password, ed25519, certificate].
