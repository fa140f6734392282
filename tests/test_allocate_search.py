"""NetAdapt and AMC: budgets, determinism, resuming from a checkpoint; executors."""


import pytest

from prunekit.allocate import AMC, NetAdapt, TableProblem, UnstructuredProblem
from prunekit.allocate.executor import InProcessExecutor, get_executor
from prunekit.errors import PrunekitError
from prunekit.runs import RunDir


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def problem(digits_mlp):
    model, data, config = digits_mlp
    return UnstructuredProblem(model, data.test, data.example_input(1), metric="flops",
                               train_data=data.train, train_config=config)


def table_problem():
    curves = {"a": [(0.5, 0.01), (0.9, 0.3)], "b": [(0.5, 0.05), (0.9, 0.2)], "c": [(0.5, 0.0), (0.9, 0.02)]}
    return TableProblem({"a": 40, "b": 25, "c": 60}, {"a": 3.0, "b": 7.0, "c": 1.0}, curves, fixed=10.0,
                        max_ratio=0.9)


def test_netadapt_meets_budget_and_front_is_monotone(problem):
    result = NetAdapt(0.5, delta=0.15, finetune_steps=5).allocate(problem)
    assert result.met, result.summary()
    front = result.details["front"]
    assert front[0]["cost"] == problem.dense_cost()
    assert all(b["cost"] < a["cost"] for a, b in zip(front, front[1:]))  # every iteration cuts the cost
    assert all(b["cost"] <= b["goal"] for b in front[1:])
    assert result.accuracy == problem.evaluate(result.model)
    assert problem.cost(result.counts) == result.achieved


def test_netadapt_picks_the_best_proposal_on_a_table():
    problem = table_problem()
    result = NetAdapt(0.5, delta=0.1, finetune_steps=0).allocate(problem)
    assert result.met
    for row in result.decisions[1:]:
        assert row["accuracy"] == max(row["proposals"].values())


def test_netadapt_resumes_from_checkpoint(problem, tmp_path):
    settings = {"allocator": "netadapt", "budget": 0.5}
    straight = NetAdapt(0.5, delta=0.15, finetune_steps=5).allocate(problem)
    run = RunDir.open(tmp_path, "na", settings)
    partial = NetAdapt(0.5, delta=0.15, finetune_steps=5, run=run).allocate(problem, stop_after=2)
    assert partial.details["finished"] is False and not partial.met
    resumed = NetAdapt(0.5, delta=0.15, finetune_steps=5, run=RunDir.open(tmp_path, "na", settings)).allocate(problem)
    assert resumed.counts == straight.counts
    assert [r["accuracy"] for r in resumed.decisions] == [r["accuracy"] for r in straight.decisions]
    assert (run.path / "plots" / "netadapt_front.png").is_file()
    last = len(resumed.decisions) - 1
    point = run.load_checkpoint(f"netadapt-iteration{last}")  # each point of the front is a model
    assert problem.evaluate(problem.restore(point["counts"], point["model"])) == resumed.decisions[-1]["accuracy"]


@pytest.mark.parametrize("budget", [0.3, 0.6])
def test_amc_meets_budget_on_table(budget):
    problem = table_problem()
    result = AMC(budget, episodes=12, warmup=4, updates=5).allocate(problem)
    assert result.met, result.summary()
    curve = result.details["learning_curve"]
    assert len(curve) == 12 and max(curve) == result.details["best_reward"]
    assert result.accuracy == pytest.approx(problem.accuracy(result.counts))


def test_amc_same_seed_same_result_and_resume(problem, tmp_path):
    kwargs = dict(episodes=8, warmup=3, updates=5, seed=3)
    a = AMC(0.5, **kwargs).allocate(problem)
    b = AMC(0.5, **kwargs).allocate(problem)
    assert a.met and a.counts == b.counts and a.details["learning_curve"] == b.details["learning_curve"]
    settings = {"allocator": "amc", **kwargs}
    AMC(0.5, **kwargs, run=RunDir.open(tmp_path, "amc", settings)).allocate(problem, stop_after=5)
    resumed = AMC(0.5, **kwargs, run=RunDir.open(tmp_path, "amc", settings)).allocate(problem)
    assert resumed.details["learning_curve"] == a.details["learning_curve"]
    assert resumed.counts == a.counts
    c = AMC(0.5, **{**kwargs, "seed": 4}).allocate(problem)
    assert c.details["learning_curve"] != a.details["learning_curve"]


def test_searches_reject_impossible_budgets(problem):
    for allocator in (NetAdapt(0.001), AMC(0.001, episodes=2, warmup=1)):
        with pytest.raises(PrunekitError, match="below what the prunable layers allow"):
            allocator.allocate(problem)


def test_executor_names():
    assert isinstance(get_executor(None), InProcessExecutor)
    with pytest.raises(PrunekitError, match="Did you mean 'ray'"):
        get_executor("rey")
    assert InProcessExecutor().map(lambda shared, x: shared + x, 10, [1, 2]) == [11, 12]
