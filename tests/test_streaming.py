"""LocalAgreement on hand-made hypothesis sequences."""

from stt_worker.core.streaming import LocalAgreement, Partial, partial_text


def test_words_become_stable_when_two_hypotheses_agree():
    agreement = LocalAgreement()
    assert agreement.update("And so my") == Partial("And so my", 0)
    assert agreement.update("And so my fellow") == Partial("And so my fellow", len("And so my"))
    out = agreement.update("and so, my fellow Americans")
    # Case and punctuation do not break agreement; stable words keep their first spelling.
    assert out == Partial("And so my fellow Americans", len("And so my fellow"))


def test_a_revision_never_touches_stable_words():
    agreement = LocalAgreement()
    agreement.update("Stuff it into")
    agreement.update("Stuff it into you")  # "Stuff it into" is now stable
    out = agreement.update("Stuffered into you his belly")
    # The stable words stay; the new words are aligned after them, none lost or doubled.
    assert out == Partial("Stuff it into you his belly", len("Stuff it into you"))


def test_disagreement_commits_nothing_new():
    agreement = LocalAgreement()
    agreement.update("the cat")
    assert agreement.update("a dog sat") == Partial("a dog sat", 0)
    assert agreement.stable_text == ""


def test_partials_of_a_fraction_of_a_word_publish_nothing():
    # What tiny.en wrote for the first 100-300 ms of the shared sentences.
    for junk in ("", "n", "S", "3", ".", "f"):
        assert partial_text(junk) == ""
    for word in ("as", "I", "He", "你好", "after"):
        assert partial_text(word) == word


def test_a_partial_that_is_one_phrase_looped_is_published_once():
    assert partial_text("He could. He could. He could.") == "He could."
    assert partial_text("For a... For a... For a...") == "For a..."
    assert partial_text("he hoped, he hoped, he hoped,") == "he hoped,"
    # A phrase that does not just repeat is left alone.
    assert partial_text("he could he could wait") == "he could he could wait"
    assert partial_text("He could walk.") == "He could walk."


def test_held_apart_a_guess_repeated_a_short_step_later_is_not_yet_stable():
    agreement = LocalAgreement()
    agreement.update("the wood", at_s=0.2, apart_s=0.3)
    # 200 ms later, the same guess at a word still being spoken: nothing 300 ms earlier to
    # agree with yet, so nothing is promised.
    assert agreement.update("the wood", at_s=0.4, apart_s=0.3) == Partial("the wood", 0)
    # Held against the hypothesis of 0.2 s, "the" is agreed and the whole word is not lost.
    out = agreement.update("the woodcutters", at_s=0.6, apart_s=0.3)
    assert out == Partial("the woodcutters", len("the"))
    # Without `apart_s` the repeated guess was promised, and the whole word broke it.
    plain = LocalAgreement()
    plain.update("the wood")
    assert plain.update("the wood").stable_chars == len("the wood")


def test_held_apart_over_many_short_steps_the_hypothesis_that_far_back_is_found():
    agreement = LocalAgreement()
    stable = [
        agreement.update("one two", at_s=round(0.1 * step, 1), apart_s=1.0).stable_chars
        for step in range(12)
    ]
    # Nothing a second earlier to agree with until 1.0 s; from then on, the words agree.
    assert stable == [0] * 10 + [len("one two")] * 2
