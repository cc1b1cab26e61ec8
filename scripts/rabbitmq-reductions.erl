%% Where a RabbitMQ node's work goes: every process's reductions (the VM's unit of work)
%% over 10 s, summed by the kind of process (its initial call), largest first.
%%   rabbitmqctl -n gsl@localhost eval "$(cat scripts/rabbitmq-reductions.erl)"
%% (docs/benchmarks.md, "Where RabbitMQ's time goes").
Kind = fun(P) -> case proc_lib:translate_initial_call(P) of {M, _, _} -> M; _ -> unknown end end,
Snap = fun() -> maps:from_list([{P, {R, Kind(P)}} || P <- processes(), {reductions, R} <- [process_info(P, reductions)]]) end,
S1 = Snap(), timer:sleep(10000), S2 = Snap(),
Acc = maps:fold(fun(P, {R2, K}, A) ->
          R1 = case maps:get(P, S1, undefined) of {X, _} -> X; undefined -> 0 end,
          maps:update_with(K, fun({N, C}) -> {N + R2 - R1, C + 1} end, {R2 - R1, 1}, A)
      end, #{}, S2),
Total = lists:sum([N || {N, _} <- maps:values(Acc)]),
Sorted = lists:reverse(lists:keysort(2, [{K, N, C} || {K, {N, C}} <- maps:to_list(Acc)])),
[io:format("~-40s ~12b ~6.1f% ~6b procs~n", [atom_to_list(K), N, 100 * N / Total, C]) || {K, N, C} <- lists:sublist(Sorted, 25)],
io:format("total ~b reductions~n", [Total]), ok.
