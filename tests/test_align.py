"""The progressive loop on tiny models: folders, baselines, stop reasons, resume after a kill, bad input."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from failclosed_interp.adapters import LoraSettings
from failclosed_interp.attacks import AdaptiveAttackConfig
from failclosed_interp.align import AlignConfig, align, training_ablation
from failclosed_interp.directions import Direction, DirectionSet
from failclosed_interp.interventions import orthonormal_basis
from failclosed_interp.prompts import builtin
from failclosed_interp.reproduce.store import keep_run, restore_runs
from failclosed_interp.search import DirectionJobConfig
from failclosed_interp.rdo import RDOConfig
from failclosed_interp.training import SFTConfig, TrainConfig


def tiny_config(method: str = "sft", rounds: int = 1, **kw) -> AlignConfig:
    sft = SFTConfig(model="tiny-llama", n_harmful=4, n_harmless=4, n_borderline=2, answer_tokens=4,
                    train=TrainConfig(epochs=1, batch_size=4, lr=1e-2, max_length=200, lora=LoraSettings(r=2, alpha=4)))
    return AlignConfig(method=method, rounds=rounds, sft=sft, directions=DirectionJobConfig(n_train=4, n_val=2),
                       rdo=RDOConfig(steps=2, batch_size=2, target_tokens=4), n_eval=3, eval_tokens=4,
                       attacker=TINY_ATTACKER, **kw)


TINY_ATTACKER = AdaptiveAttackConfig(n_fit=4, positions=(-1,), rdo_steps=0, n_verify=0, refusal_probe_tokens=4)


def test_sft_baseline_writes_every_round_and_a_summary(tmp_path):
    summary = align(tiny_config("sft", rounds=2), tmp_path, progress=False)
    for k in range(3):
        assert (tmp_path / f"round_{k}" / "adapter" / "adapter_model.safetensors").is_file()
        assert json.loads((tmp_path / f"round_{k}" / "training.json").read_text())["steps"] == 2  # 6 utility / batch 4
    assert (tmp_path / "final" / "adapter" / "adapter_config.json").is_file()
    assert summary["method"] == "sft" and summary["rounds_completed"] == 2 and summary["stop_reason"] is None
    for key in ("refusal_harmful", "refusal_harmless", "refusal_borderline", "perplexity_harmless"):
        assert summary[key] is not None
    assert summary["refusal_harmful_each_ablated"] == []  # the baseline never ablates anything
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    # the final adapter is the last round's, byte for byte
    assert (tmp_path / "final/adapter/adapter_model.safetensors").read_bytes() == \
        (tmp_path / "round_2/adapter/adapter_model.safetensors").read_bytes()


@pytest.mark.parametrize("method", ["failclosed", "refat"])
def test_loop_stops_and_says_why_when_the_model_never_refuses(tmp_path, method):
    summary = align(tiny_config(method, rounds=3), tmp_path, progress=False)
    assert summary["rounds_completed"] == 0  # round 0 trained; no direction to train against afterwards
    assert "refuses none" in summary["stop_reason"]
    assert not (tmp_path / "round_1").exists()
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["completed_round"] == 0 and state["stop_reason"] == summary["stop_reason"]
    assert summary["adaptive_direction_layer"] is None and "adaptive_failure" in summary


def test_a_killed_run_resumes_from_the_last_completed_round_with_the_same_result(tmp_path):
    config = tiny_config("sft", rounds=2)
    align(config, tmp_path / "whole", progress=False)

    calls = []

    def kill_in_round_2(step, losses):
        calls.append(step)
        if len(calls) == 2 * 2 + 1:  # rounds 0 and 1 (2 steps each) done, 1 step into round 2
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        align(config, tmp_path / "killed", progress=False, on_step=kill_in_round_2)
    state = json.loads((tmp_path / "killed" / "state.json").read_text())
    assert state["completed_round"] == 1 and not (tmp_path / "killed" / "summary.json").exists()

    resumed_steps = []
    align(config, tmp_path / "killed", progress=False, on_step=lambda s, _: resumed_steps.append(s))
    assert resumed_steps == [0, 1]  # only round 2 ran again
    whole = load_file(tmp_path / "whole/final/adapter/adapter_model.safetensors")
    resumed = load_file(tmp_path / "killed/final/adapter/adapter_model.safetensors")
    assert whole.keys() == resumed.keys()
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], rtol=0, atol=0)


def test_a_run_killed_after_a_rounds_training_resumes_without_training_it_again(tmp_path, monkeypatch):
    import failclosed_interp.align as align_module

    config = tiny_config("sft", rounds=2)
    align(config, tmp_path / "whole", progress=False)
    real_checks, killed = align_module._round_metrics, []

    def killed_in_round_1s_checks(model, config, found, examples):
        if not killed and (tmp_path / "killed" / "round_1").exists():
            killed.append(True)
            raise KeyboardInterrupt  # round 1 trained, its adapter saved; killed before the round was recorded
        return real_checks(model, config, found, examples)

    monkeypatch.setattr(align_module, "_round_metrics", killed_in_round_1s_checks)
    with pytest.raises(KeyboardInterrupt):
        align(config, tmp_path / "killed", progress=False)
    assert json.loads((tmp_path / "killed" / "state.json").read_text())["completed_round"] == 0
    assert (tmp_path / "killed" / "round_1" / "training.json").exists()

    resumed_steps = []
    summary = align(config, tmp_path / "killed", progress=False, on_step=lambda s, _: resumed_steps.append(s))
    assert resumed_steps == [0, 1]  # round 2's two steps: round 1 was not trained again
    assert summary["rounds_completed"] == 2
    assert (tmp_path / "whole/final/adapter/adapter_model.safetensors").read_bytes() == \
        (tmp_path / "killed/final/adapter/adapter_model.safetensors").read_bytes()


def test_a_run_started_from_another_runs_round_0_equals_a_run_that_trained_it(tmp_path):
    config = tiny_config("sft", rounds=2)
    align(config, tmp_path / "whole", progress=False)
    steps = []
    summary = align(config, tmp_path / "adopted", progress=False, round0_from=tmp_path / "whole",
                    on_step=lambda s, _: steps.append(s))
    assert steps == [0, 1, 0, 1]  # rounds 1 and 2 only: round 0's model came from "whole"
    round0 = json.loads((tmp_path / "adopted/round_0/metrics.json").read_text())
    assert round0["round0_from"] == str(tmp_path / "whole") and summary["rounds_completed"] == 2
    assert (tmp_path / "whole/final/adapter/adapter_model.safetensors").read_bytes() == \
        (tmp_path / "adopted/final/adapter/adapter_model.safetensors").read_bytes()
    # a source that has not finished its round 0 leaves the run to train its own
    (tmp_path / "unfinished").mkdir()
    steps.clear()
    align(tiny_config("sft", rounds=1), tmp_path / "own", progress=False, round0_from=tmp_path / "unfinished",
          on_step=lambda s, _: steps.append(s))
    assert steps == [0, 1, 0, 1]


def test_a_source_restored_from_a_kept_copy_without_its_round_0_adapter_leaves_the_run_to_train_its_own(tmp_path):
    config = tiny_config("sft", rounds=1)
    align(config, tmp_path / "runs" / "source", progress=False)
    keep_run(tmp_path / "runs" / "source", tmp_path / "results")  # keeps the last round's adapter only
    restore_runs(tmp_path / "results", tmp_path / "new_machine")
    restored = tmp_path / "new_machine" / "source"
    assert (restored / "state.json").exists() and not (restored / "round_0" / "adapter").exists()
    steps = []
    summary = align(config, tmp_path / "own", progress=False, round0_from=restored,
                    on_step=lambda s, _: steps.append(s))
    assert steps == [0, 1, 0, 1] and summary["rounds_completed"] == 1  # round 0 trained here, then round 1
    assert "round0_from" not in json.loads((tmp_path / "own/round_0/metrics.json").read_text())


def test_a_round_0_trained_with_other_sft_settings_is_refused(tmp_path):
    align(tiny_config("sft", rounds=1), tmp_path / "source", progress=False)
    other = tiny_config("sft", rounds=1)
    other = dataclasses.replace(other, sft=dataclasses.replace(other.sft, seed=7))
    with pytest.raises(ValueError, match="other sft settings"):
        align(other, tmp_path / "new", progress=False, round0_from=tmp_path / "source")
    assert not (tmp_path / "new" / "state.json").exists() and not (tmp_path / "new" / "round_0").exists()


def test_a_folder_of_another_run_is_refused_and_left_alone(tmp_path):
    align(tiny_config("sft", rounds=2), tmp_path, progress=False)
    before = (tmp_path / "state.json").read_text()
    with pytest.raises(ValueError, match="other settings.*method"):
        align(tiny_config("refat", rounds=2), tmp_path, progress=False)
    with pytest.raises(ValueError, match="other settings.*rounds"):  # fewer rounds than already completed
        align(tiny_config("sft", rounds=1), tmp_path, progress=False)
    assert (tmp_path / "state.json").read_text() == before


def test_a_finished_run_extended_with_more_rounds_equals_a_run_that_had_them_from_the_start(tmp_path):
    align(tiny_config("sft", rounds=2), tmp_path / "whole", progress=False)
    align(tiny_config("sft", rounds=1), tmp_path / "extended", progress=False)
    steps = []
    summary = align(tiny_config("sft", rounds=2), tmp_path / "extended", progress=False,
                    on_step=lambda s, _: steps.append(s))
    assert steps == [0, 1]  # only round 2 trained
    assert summary["rounds_completed"] == 2
    assert json.loads((tmp_path / "extended/config.json").read_text())["rounds"] == 2
    assert (tmp_path / "whole/final/adapter/adapter_model.safetensors").read_bytes() == \
        (tmp_path / "extended/final/adapter/adapter_model.safetensors").read_bytes()


def test_a_run_saved_before_a_setting_existed_resumes_with_that_settings_default(tmp_path):
    config = tiny_config("sft", rounds=1)
    align(config, tmp_path, progress=False)
    state = json.loads((tmp_path / "state.json").read_text())
    del state["config"]["search"]  # as written by a version without the option
    (tmp_path / "state.json").write_text(json.dumps(state))
    assert align(config, tmp_path, progress=False)["rounds_completed"] == 1


@pytest.mark.parametrize("bad, match", [
    (dict(rounds=0), "rounds must be >= 1"),
    (dict(method="dpo"), "method must be one of"),
    (dict(mode="sometimes"), "mode must be one of"),
    (dict(search="everywhere"), "search must be one of"),
    (dict(min_new_component=0.0), "min_new_component"),
])
def test_bad_settings_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        AlignConfig(**bad)


def _directions(n: int, d_model: int = 16) -> DirectionSet:
    vectors = torch.randn(n, d_model, generator=torch.Generator().manual_seed(0))
    return DirectionSet(tuple(Direction(v, layer=i, position=-1, method="dim") for i, v in enumerate(vectors)))


def _span(intervention) -> torch.Tensor:
    basis = orthonormal_basis(intervention.directions.double())
    return basis.T @ basis


@pytest.mark.parametrize("method, mode, expected", [
    ("failclosed", "cumulative", [0, 1, 2]), ("failclosed", "last-only", [2]), ("refat", "cumulative", [2]),
])
def test_safety_batches_train_against_the_right_directions(method, mode, expected):
    found = _directions(3)
    (ablation,) = training_ablation(AlignConfig(method=method, mode=mode), found)
    torch.testing.assert_close(_span(ablation), _span(found[expected].ablation()))
    assert ablation.sites == found.ablation().sites and ablation.layers is None  # every layer, all three sites
    assert ablation.skip_template_prefix is False  # every position, the template prefix included (the method)
    (kept,) = training_ablation(AlignConfig(method=method, mode=mode, skip_template_prefix=True), found)
    assert kept.skip_template_prefix is True


@pytest.mark.parametrize("search", ["ablated", "plain"])
def test_the_next_direction_is_searched_with_the_found_ones_ablated_or_on_the_plain_model(tmp_path, monkeypatch, search):
    import failclosed_interp.align as align_module
    from failclosed_interp.models import load_model

    model = load_model("tiny-llama")
    found = _directions(2, model.d_model)
    new = Direction(torch.randn(model.d_model, generator=torch.Generator().manual_seed(1)), layer=1, position=-1,
                    method="dim")
    seen = []

    class Selection:
        direction = new
        refusal_tokens = (0,)

        def rules(self):
            return "main rules (KL <= 0.1, induce score > 0.0)"

    def fake_direction_job(m, out, config, interventions=(), progress=True, png=True):
        seen.append(list(interventions))
        return Selection()

    monkeypatch.setattr(align_module, "direction_job", fake_direction_job)
    config = dataclasses.replace(tiny_config("failclosed"), search=search, rdo=None, min_ablation_drop=None,
                                 min_addition_rise=None)
    direction, stop, _ = align_module._next_direction(model, config, found, tmp_path, 1, progress=False)
    assert direction is new and stop is None
    if search == "plain":
        assert seen == [[]]  # as the adaptive attacker searches
    else:
        (ablation,) = seen[0]
        torch.testing.assert_close(_span(ablation), _span(found.ablation()))


def test_a_broad_search_round_trains_against_the_attacker_style_choice_on_the_plain_model(tmp_path, monkeypatch):
    import failclosed_interp.align as align_module
    from failclosed_interp.broad_search import BROAD_SEARCH
    from failclosed_interp.models import load_model

    model = load_model("tiny-llama")
    found = _directions(2, model.d_model)
    new = Direction(torch.randn(model.d_model, generator=torch.Generator().manual_seed(1)), layer=1, position=-2,
                    method="dim")
    calls = []

    def fake_broad_direction(m, settings, directions, earlier, min_new_component, folder, progress=False):
        calls.append((settings, earlier, min_new_component, folder))
        return new, (0,), {"broad_search": {"kl_budget": 0.3, "layer": 1}}

    monkeypatch.setattr(align_module, "broad_direction", fake_broad_direction)
    monkeypatch.setattr(align_module, "direction_job", lambda *a, **k: pytest.fail("the DIM rules must not choose"))
    config = dataclasses.replace(tiny_config("failclosed"), search="broad", rdo=None, min_ablation_drop=None,
                                 min_addition_rise=None)
    direction, stop, notes = align_module._next_direction(model, config, found, tmp_path, 1, progress=False)
    assert direction is new and stop is None and notes["broad_search"]["layer"] == 1
    ((settings, earlier, min_new, folder),) = calls
    assert settings == BROAD_SEARCH and earlier is found and min_new == config.min_new_component
    assert folder == tmp_path / "round_1" / "broad_search"


def test_random_subsets_mode_ablates_a_reproducible_random_subset_each_step():
    from failclosed_interp.align import RandomSubsetAblation, safety_interventions

    found = _directions(3)
    per_step = safety_interventions(AlignConfig(method="failclosed", mode="random-subsets"), found, seed=5)
    assert isinstance(per_step, RandomSubsetAblation)
    subsets = [tuple(per_step.subset(step)) for step in range(200)]
    assert len(set(subsets)) == 8  # every subset of 3 directions occurs, the empty and the full one included
    assert subsets == [tuple(RandomSubsetAblation(found, 5).subset(step)) for step in range(200)]  # reproducible
    assert subsets != [tuple(RandomSubsetAblation(found, 6).subset(step)) for step in range(200)]
    for step, subset in enumerate(subsets[:20]):
        interventions = per_step(step)
        if subset:
            (ablation,) = interventions
            assert ablation.skip_template_prefix is False
            torch.testing.assert_close(_span(ablation), _span(found[list(subset)].ablation()))
        else:
            assert interventions == []
    # the other modes and the baselines train against one fixed ablation
    cumulative = safety_interventions(AlignConfig(method="failclosed"), found, seed=5)
    torch.testing.assert_close(_span(cumulative[0]), _span(found.ablation()))
    assert safety_interventions(AlignConfig(method="sft", mode="random-subsets"), found, seed=5) == []


def test_nothing_is_ablated_for_the_sft_baseline_or_before_the_first_direction():
    assert training_ablation(AlignConfig(method="sft"), _directions(2)) == []
    assert training_ablation(AlignConfig(method="failclosed"), DirectionSet()) == []


def test_cli_align_runs_the_baseline_and_prints_the_table(tmp_path, capsys):
    from failclosed_interp.cli import main

    code = main(["align", "--model", "tiny-llama", "--method", "sft", "--rounds", "1", "--epochs", "1",
                 "--n-eval", "2", "--n-harmful", "4", "--n-harmless", "4", "--n-borderline", "0", "--out", str(tmp_path / "run")])
    assert code == 0
    out = capsys.readouterr().out
    assert "method sft: 1 round(s) completed" in out and "perplexity" in out
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["rounds_completed"] == 1
    assert main(["align", "--model", "tiny-llama", "--rounds", "0", "--out", str(tmp_path / "bad")]) == 2
    assert main(["align", "--model", "tiny-llama", "--method", "sft", "--rounds", "1", "--epochs", "1", "--n-eval", "2",
                 "--n-harmful", "4", "--n-harmless", "4", "--n-borderline", "0", "--round0-from", str(tmp_path / "run"),
                 "--out", str(tmp_path / "adopted")]) == 0
    assert json.loads((tmp_path / "adopted/round_0/metrics.json").read_text())["round0_from"] == str(tmp_path / "run")



def test_cli_align_passes_search_and_mode_to_the_loop(tmp_path, monkeypatch):
    import failclosed_interp.align as align_module
    from failclosed_interp.cli import main

    seen = {}

    def fake_align(config, out, **kw):
        seen["config"] = config
        raise ValueError("stop here")

    monkeypatch.setattr(align_module, "align", fake_align)
    assert main(["align", "--model", "tiny-llama", "--search", "plain", "--mode", "random-subsets",
                 "--out", str(tmp_path)]) == 2
    assert seen["config"].search == "plain" and seen["config"].mode == "random-subsets"


def test_final_summary_runs_the_independent_attacker_on_the_final_model_and_test_prompts(tmp_path, monkeypatch):
    """evaluate_final attacks the final model itself with the adaptive attacker (its own prompts and search),
    on the held-out harmful TEST prompts, and reports refusal and compliance at its report budget plus the
    whole KL budget curve."""
    import failclosed_interp.align as align_module
    from failclosed_interp.models import load_model

    model = load_model("tiny-llama")
    seen = {}
    real_attack = align_module.adaptive_attack

    def spy_attack(m, prompts, config, **kwargs):
        seen.update(model=m, prompts=list(prompts), config=config)
        seen["result"] = real_attack(m, prompts, config, **kwargs)
        return seen["result"]

    monkeypatch.setattr(align_module, "adaptive_attack", spy_attack)
    config = tiny_config("failclosed")
    result = align_module.evaluate_final(model, config, DirectionSet(), tmp_path, progress=False)
    assert seen["model"] is model and seen["config"] == config.attacker
    assert set(seen["prompts"]) <= set(builtin("harmful", "test")) and len(seen["prompts"]) == config.n_eval
    report = seen["result"].report
    assert result["refusal_harmful_adaptive_ablated"] == report.refusal.value
    assert result["compliance_harmful_adaptive_ablated"] == report.compliance.value
    assert result["ci"]["refusal_harmful_adaptive_ablated"]["interval"] == "wilson"
    assert [o["kl_budget"] for o in result["adaptive_attack"]["budgets"]] == ["inf" if b == float("inf") else b
                                                                            for b in config.attacker.kl_budgets]
    assert result["adaptive_direction_layer"] is None and "refused none" in result["adaptive_failure"]


def test_rounds_check_validation_prompts_and_only_the_summary_reads_test_prompts(tmp_path, monkeypatch):
    import failclosed_interp.align as align_module

    test, val = set(builtin("harmful", "test")), set(builtin("harmful", "val"))
    reads = []
    real_refusals = align_module._refusals

    def spy_refusals(m, config, prompt_sets, ablate=None):
        for prompts in prompt_sets.values():
            if ablate is None and set(prompts) <= set(builtin("harmful", "all")):
                reads.append("test" if set(prompts) <= test else "val" if set(prompts) <= val else "other")
        return real_refusals(m, config, prompt_sets, ablate)

    monkeypatch.setattr(align_module, "_refusals", spy_refusals)
    summary = align(tiny_config("sft", rounds=1), tmp_path, progress=False)
    assert reads == ["val", "val", "test"]  # rounds 0 and 1 on validation prompts, the summary once on test ones
    metrics = json.loads((tmp_path / "round_1" / "metrics.json").read_text())
    assert metrics["checked_on"] == "val" and metrics["ci"]["refusal_harmful"]["n"] == 3
    assert summary["ci"]["refusal_harmful"]["n"] == 3


def test_rounds_after_round_0_train_retrain_epochs(tmp_path):
    config = tiny_config("sft", rounds=2)
    config = dataclasses.replace(config, retrain_epochs=1,
                                 sft=dataclasses.replace(config.sft, train=dataclasses.replace(config.sft.train, epochs=2)))
    align(config, tmp_path, progress=False)
    steps = [json.loads((tmp_path / f"round_{k}" / "training.json").read_text())["steps"] for k in range(3)]
    assert steps == [4, 2, 2]  # 6 utility examples, batch 4: 2 steps per epoch
    with pytest.raises(ValueError, match="retrain_epochs must be >= 1"):
        dataclasses.replace(config, retrain_epochs=0)


def test_reference_answers_are_kept_and_shared_by_models_on_one_base(tmp_path, monkeypatch):
    import failclosed_interp.align as align_module
    from failclosed_interp.models import load_model

    prompts = builtin("harmless", "test").take_up_to(3, seed=0).to_list()
    first = load_model("tiny-llama", lora=LoraSettings(r=2))
    answers = align_module.reference_answers(first, prompts, 5, tmp_path / "ref.json")
    calls = []
    real_generate = align_module.generate
    monkeypatch.setattr(align_module, "generate", lambda *a, **k: calls.append(1) or real_generate(*a, **k))
    other = load_model("tiny-llama", lora=LoraSettings(r=4))  # another adapter, the same frozen base
    assert align_module.reference_answers(other, prompts, 5, tmp_path / "ref.json") == answers and not calls
    align_module.reference_answers(other, prompts, 6, tmp_path / "ref.json")  # another budget: answered again
    assert calls == [1]
