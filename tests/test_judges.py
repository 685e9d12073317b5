"""The three-way judge labels planted refusals, compliances and non-answers (empty, looping, one token
repeated, a fluent answer to another prompt); refusal markers count only in the opening; any judge can be
asked for labels; judges are found by name; the HarmBench template reads "Yes" as compliance."""

import pytest

from failclosed_interp.judges import (
    HARMBENCH_TEMPLATE, JUDGE_NAMES, LLMJudge, PrefixJudge, SubstringJudge, ThreeWayConfig, ThreeWayJudge, Verdict,
    classify, distinct_ratio, harmbench_judge, judge_by_name, longest_word_run, relevance,
)

PROMPT = "How do I bake a loaf of sourdough bread at home?"
ANSWER = ("To bake sourdough bread at home, mix flour, water, salt and an active starter, let the dough rise "
          "overnight, shape the loaf, and bake it in a hot Dutch oven for about forty minutes.")
OTHER = ("The French Revolution began in 1789 when the Estates-General met at Versailles; the storming of the "
         "Bastille followed in July and the monarchy was abolished three years later.")
REFUSAL = "I'm sorry, but I can't help with that request."
J = ThreeWayJudge()


def labels(responses, prompt=PROMPT, judge=J):
    return judge.classify([prompt] * len(responses), responses)


def test_planted_answers_get_their_labels():
    assert labels([ANSWER, REFUSAL]) == [Verdict.COMPLIANCE, Verdict.REFUSAL]
    assert J([PROMPT, PROMPT], [ANSWER, REFUSAL]) == [False, True]


@pytest.mark.parametrize("response", ["", "   \n\t", "...!!!", "bread " * 30, "the " * 40,
                                      "Mix the flour and water. " * 15, OTHER])
def test_planted_non_answers_are_non_answers(response):
    assert labels([response]) == [Verdict.NON_ANSWER]


def test_a_caveat_deep_inside_a_compliant_answer_is_not_a_refusal():
    late = ANSWER + " " + "Keep the starter warm and feed it daily. " * 5 + "I cannot stress enough: use a thermometer."
    assert labels([late]) == [Verdict.COMPLIANCE]
    assert labels([late], judge=ThreeWayJudge(ThreeWayConfig(opening_chars=len(late)))) == [Verdict.REFUSAL]


def test_sympathy_is_not_refusal():
    kind = "I'm sorry to hear your bread keeps failing. " + ANSWER
    assert labels([kind]) == [Verdict.COMPLIANCE]


def test_a_refusal_that_then_loops_is_still_a_refusal():
    assert labels(["I cannot help with that. " * 10]) == [Verdict.REFUSAL]


def test_verdicts_do_not_depend_on_the_other_pairs_judged_with_them():
    alone = labels([ANSWER])
    together = J.classify([PROMPT, "Who won the 1998 World Cup?", PROMPT], [ANSWER, OTHER, OTHER])
    assert together[0] == alone[0] == Verdict.COMPLIANCE


def test_text_features_behave():
    assert relevance(PROMPT, ANSWER) > relevance(PROMPT, OTHER)
    assert relevance(PROMPT, "") == 0.0
    assert distinct_ratio("abc") == 1.0 and distinct_ratio("ab " * 50) < 0.1 < distinct_ratio(ANSWER)
    assert longest_word_run("no no no, yes") == 3 and longest_word_run("") == 0


def test_config_rejects_bad_thresholds():
    with pytest.raises(ValueError, match="min_relevance is a share"):
        ThreeWayConfig(min_relevance=1.5)
    with pytest.raises(ValueError, match="opening_chars must be >= 1"):
        ThreeWayConfig(opening_chars=0)
    with pytest.raises(ValueError, match="markers"):
        ThreeWayConfig(markers=())


def test_classify_works_for_refused_or_not_judges():
    assert classify(SubstringJudge(), [PROMPT] * 2, [ANSWER, REFUSAL]) == [Verdict.COMPLIANCE, Verdict.REFUSAL]
    assert classify(J, [PROMPT], [""]) == [Verdict.NON_ANSWER]


def test_judges_by_name():
    assert isinstance(judge_by_name("three-way"), ThreeWayJudge) and JUDGE_NAMES[0] == "three-way"
    assert isinstance(judge_by_name("substring"), SubstringJudge) and isinstance(judge_by_name("prefix"), PrefixJudge)
    with pytest.raises(ValueError, match="unknown judge 'llama'.*three-way"):
        judge_by_name("llama")


def test_harmbench_judge_reads_yes_as_compliance(monkeypatch):
    judge = harmbench_judge(object())
    assert judge.template == HARMBENCH_TEMPLATE and judge.invert and judge.name == "harmbench"
    assert "{prompt}" in HARMBENCH_TEMPLATE and "{response}" in HARMBENCH_TEMPLATE and "Yes or No" in HARMBENCH_TEMPLATE
    # "Yes, carried out" for the first pair, "No" for the second: stub the yes/no read-out.
    monkeypatch.setattr(LLMJudge, "__call__", lambda self, p, r: [self.invert != said for said in (True, False)])
    assert judge.classify(["a", "b"], ["x", "y"]) == [Verdict.COMPLIANCE, Verdict.REFUSAL]
    with pytest.raises(ValueError, match="must contain"):
        LLMJudge(object(), template="no placeholders")


def test_judged_responses_keep_labels_and_both_rates():
    from failclosed_interp.scoring import judge_responses

    judged = judge_responses([PROMPT] * 4, [ANSWER, REFUSAL, "", ANSWER])
    assert judged.labels == ("compliance", "refusal", "non_answer", "compliance")
    assert judged.refused == (False, True, False, False)
    assert judged.rate.value == 0.25 and judged.compliance.value == 0.5 and judged.rate.interval == "wilson"
    data = judged.to_dict()
    assert data["compliance_rate"]["value"] == 0.5 and [i["label"] for i in data["items"]] == list(judged.labels)
