"""Prompt templates of the LLM judges, as data (se_jax/data/prompts.py renders them).

Each entry of TEMPLATES:
  kind         "entailment" (premise answer a -> hypothesis answer b, given the question)
               or "correctness" (a proposed answer against the gold answers).
  instruction  the task, said once at the top.
  example      one worked example; `{label}` is filled with the example's label word.
  query        the item to judge (same fields as `example`, no label).
  cue          what precedes the label in plain (non-chat) prompts; chat models answer
               in the assistant turn instead.
  labels       label name -> the words that count as that label (their first tokens are
               scored; the names are the LABELS of se_jax.semantic.entailment or "yes"/"no").
  shots        few-shot examples, used in order; `entropy.judge_shots` /
               `evaluation.judge_shots` take the first N (N <= len(shots)).

The entailment examples are question-dependent (each shows a question and two answers to
it) and cover entailment, contradiction and neutral, as in the paper's SE (Llama) setting.
They were written for this project; none is a benchmark question.

The instruction and the few-shot block are identical for every pair, so the scorer
prefills them once (se_jax/generation/scoring.py); only `query` differs per pair.
"""

ENTAILMENT_LABELS = {
    "contradiction": ("contradiction", "Contradiction"),
    "neutral": ("neutral", "Neutral"),
    "entailment": ("entailment", "Entailment"),
}
YES_NO = {"yes": ("yes", "Yes"), "no": ("no", "No")}

_ENTAILMENT_EXAMPLE = ("Question: {question}\nAnswer 1: {a}\nAnswer 2: {b}\n"
                       "Does Answer 1 semantically entail Answer 2? Label: {label}")
_ENTAILMENT_QUERY = ("Question: {question}\nAnswer 1: {a}\nAnswer 2: {b}\n"
                     "Does Answer 1 semantically entail Answer 2? Respond with entailment, "
                     "contradiction, or neutral.")

ENTAILMENT_SHOTS = (
    dict(question="Which planet in the solar system has the most moons?",
         a="Saturn", b="It is Saturn, the ringed gas giant.", label="entailment"),
    dict(question="In what year did the Berlin Wall come down?",
         a="1989", b="It fell in 1991.", label="contradiction"),
    dict(question="Who painted the ceiling of the Sistine Chapel?",
         a="An Italian artist of the Renaissance", b="Michelangelo", label="neutral"),
    dict(question="What is the chemical symbol for gold?",
         a="Au", b="The symbol of gold is Au.", label="entailment"),
    dict(question="How many strings does a standard violin have?",
         a="four strings", b="six", label="contradiction"),
    dict(question="Where was the composer Frederic Chopin born?",
         a="Poland", b="Zelazowa Wola, a village in Poland", label="neutral"),
)

_CORRECTNESS_EXAMPLE = ("Question: {question}\nExpected answer: {gold}\n"
                        "Proposed answer: {prediction}\n"
                        "Does the proposed answer mean the same as the expected answer? "
                        "Verdict: {label}")
_CORRECTNESS_QUERY = ("Question: {question}\nExpected answer: {gold}\n"
                      "Proposed answer: {prediction}\n"
                      "Within the context of the question, does the proposed answer mean the "
                      "same as the expected answer? Respond only with yes or no.")

CORRECTNESS_SHOTS = (
    dict(question="Which river flows through Cairo?", gold="the Nile",
         prediction="It is the Nile River.", label="yes"),
    dict(question="Who wrote the novel War and Peace?", gold="Leo Tolstoy",
         prediction="Fyodor Dostoevsky", label="no"),
    dict(question="What is the boiling point of water at sea level in Celsius?",
         gold="100 degrees", prediction="one hundred", label="yes"),
)

TEMPLATES = {
    # SE (Llama): few-shot, question-dependent, one direction per prompt (run both ways).
    "entailment_fewshot": dict(
        kind="entailment",
        instruction=("You compare two answers to the same question. Decide whether the "
                     "first answer semantically entails the second one: entailment if "
                     "everything the second answer says follows from the first, "
                     "contradiction if they cannot both be true, neutral otherwise. Judge "
                     "meaning, not wording: a paraphrase, a longer sentence or a different "
                     "spelling of the same fact entails it; a more general or a more "
                     "specific answer is neutral in the direction that adds information. "
                     "Read each answer in the context of its question."),
        example=_ENTAILMENT_EXAMPLE, query=_ENTAILMENT_QUERY, cue="Label:",
        labels=ENTAILMENT_LABELS, shots=ENTAILMENT_SHOTS),
    # The reference's zero-shot EntailmentLLM wording (jlko/semantic_uncertainty).
    "entailment_reference": dict(
        kind="entailment",
        instruction="",
        example="",
        query=('We are evaluating answers to the question "{question}"\n'
               "Here are two possible answers:\n"
               "Possible Answer 1: {a}\nPossible Answer 2: {b}\n"
               "Does Possible Answer 1 semantically entail Possible Answer 2? "
               "Respond with entailment, contradiction, or neutral."),
        cue="Response:", labels=ENTAILMENT_LABELS, shots=()),
    # The correctness judge: the reference's yes/no grading prompt, zero-shot.
    "correctness_reference": dict(
        kind="correctness",
        instruction="",
        example="",
        query=("We are assessing the quality of answers to the following question: "
               "{question}\nThe expected answer is: {gold}.\n"
               "The proposed answer is: {prediction}\n"
               "Within the context of the question, does the proposed answer mean the same "
               "as the expected answer? Respond only with yes or no."),
        cue="Answer:", labels=YES_NO, shots=()),
    # The same grading question with worked examples (shared prefix).
    "correctness_fewshot": dict(
        kind="correctness",
        instruction=("You grade answers to questions. Say yes when the proposed answer "
                     "means the same as the expected answer, no otherwise."),
        example=_CORRECTNESS_EXAMPLE, query=_CORRECTNESS_QUERY, cue="Verdict:",
        labels=YES_NO, shots=CORRECTNESS_SHOTS),
}
