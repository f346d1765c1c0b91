from se_jax.data import text


def test_normalize_answer_follows_squad():
    assert text.normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert text.normalize_answer("An apple, a Pear") == "apple pear"


def test_token_f1_hand_computed():
    # pred tokens {paris, france}, ref {paris}: P=1/2, R=1 -> F1=2/3
    assert abs(text.token_f1("Paris, France", "paris") - 2 / 3) < 1e-12
    assert text.token_f1("London", "Paris") == 0.0
    assert text.token_f1("", "Paris") == 0.0
    # dropping the question's words
    assert text.token_f1("capital is Paris", "Paris", drop=["capital", "is"]) == 1.0


def test_content_tokens_drop_question_and_function_words():
    q = "Where was Ada Lovelace born?"
    assert text.content_tokens("Ada Lovelace was born in London.", q) == ["london"]
    assert text.content_tokens("The birthplace of Ada Lovelace is London", q) == [
        "birthplace", "london"]
    # Nothing would be left: drop fewer words rather than leave the answer empty.
    assert text.content_tokens("In it.", "Where is it?") == ["in"]
    assert text.content_tokens("Where?", "Where is it?") == ["where"]
    assert text.content_tokens("", q) == []


def test_alias_match_whole_words_only():
    assert text.alias_match("It is Paris, France.", ["paris"])
    assert not text.alias_match("Parisian", ["Paris"])
    assert not text.alias_match("anything", [""])


def test_is_abstention_variants():
    assert text.is_abstention(text.ABSTENTION_PHRASE)
    assert text.is_abstention("I do not know the answer")
    assert text.is_abstention("i don't know, sorry")
    assert not text.is_abstention("Paris")
    assert not text.is_abstention("")
