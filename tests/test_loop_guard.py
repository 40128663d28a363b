"""Generation that cannot run on: the pipeline's loop guard stops a model that repeats a phrase, with one copy, and
leaves other output unchanged; a model whose LLM reads a `TokenReadout` writes the words of its reading, once."""

import copy

import pytest
import torch
from conftest import noise

from configuration_asr import ASRConfig, spoken_form
from modeling_asr import ReadingConstraint
from pipeline_asr import ASRPipeline, LoopGuard
from tiny_audio.ctc_warmup import CTCWarmup
from tiny_audio.data import SkipCounter, scan, synthetic_tones
from tiny_audio.presets import build

PHRASE = " see the water"  # three distinct tokens of the offline tokenizer
LONG_PHRASE = (  # 42 distinct tokens of the offline tokenizer: longer than the loops the guard looks for
    " the a an and of to in is it you that he was for on are with as his they"
    " at be this have from or one had by word but not what all were we when your can said there"
)


def scripted_model(model, processor, phrase: str, then_end: bool):
    """A copy of `model` that says `phrase` whatever the audio, then ends the turn or says it again forever.

    Attention and MLP outputs are zeroed, so the LM head sees only the current token's embedding: each phrase token
    gets its own direction, every other token (the prompt) a shared one, and the head maps each direction to the
    next token of the phrase.
    """
    model = copy.deepcopy(model)
    tokens = processor.tokenizer(phrase, add_special_tokens=False).input_ids
    assert len(set(tokens)) == len(tokens) < model.config.text_config.hidden_size
    language_model = model.language_model
    with torch.no_grad():
        for layer in language_model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embeddings = torch.zeros_like(language_model.get_input_embeddings().weight)
        head = torch.zeros_like(embeddings)
        embeddings[:, 0] = 1.0
        head[tokens[0], 0] = 10.0
        for position, token in enumerate(tokens):
            embeddings[token] = 0.0
            embeddings[token, position + 1] = 1.0
            last = position == len(tokens) - 1
            following = (processor.end_of_turn_token_id if then_end else tokens[0]) if last else tokens[position + 1]
            head[following, position + 1] = 10.0
        language_model.get_input_embeddings().weight.copy_(embeddings)
        language_model.lm_head.weight = torch.nn.Parameter(head)  # untied from the embeddings
    return model.eval()


@pytest.fixture(scope="module")
def looping(tiny_random):
    model, processor = tiny_random
    return ASRPipeline(model=scripted_model(model, processor, PHRASE, then_end=False), processor=processor)


def generated_lengths(asr, monkeypatch) -> list[int]:
    """Records how many new tokens each `generate` call of the pipeline produced."""
    lengths = []
    generate = asr.model.generate

    def recording_generate(**inputs):
        output = generate(**inputs)
        lengths.append(output.shape[1] - inputs["input_ids"].shape[1])
        return output

    monkeypatch.setattr(asr.model, "generate", recording_generate)
    return lengths


def test_a_looping_model_stops_early_with_one_copy(looping, monkeypatch):
    clip = noise(5.0, seed=1)
    cap = looping.model.config.max_new_tokens_for(clip.size)
    lengths = generated_lengths(looping, monkeypatch)
    assert looping(clip)["text"] == PHRASE.strip()
    unguarded = looping(clip, loop_guard=False)["text"]
    assert lengths == [18, cap]  # six copies of the three-token phrase (16 tokens at least), then the duration cap
    assert unguarded.startswith(f"{PHRASE.strip()} {PHRASE.strip()}")
    assert unguarded.count("water") == cap // 3


def test_loops_longer_than_the_guard_sees_still_end_at_the_duration_cap(tiny_random, monkeypatch):
    model, processor = tiny_random
    asr = ASRPipeline(model=scripted_model(model, processor, LONG_PHRASE, then_end=False), processor=processor)
    clip = noise(5.0, seed=2)
    lengths = generated_lengths(asr, monkeypatch)
    text = asr(clip)["text"]
    assert lengths == [model.config.max_new_tokens_for(clip.size)]
    assert text.startswith(LONG_PHRASE.strip())


def test_output_without_a_loop_is_unchanged(tiny_random):
    model, processor = tiny_random
    asr = ASRPipeline(model=scripted_model(model, processor, PHRASE, then_end=True), processor=processor)
    clips = [noise(seconds, seed=3) for seconds in (0.4, 5.0)]
    assert asr(clips, loop_guard=False) == asr(clips) == [{"text": PHRASE.strip()}] * 2
    plain = ASRPipeline(model=model, processor=processor)
    assert plain(clips, loop_guard=False) == plain(clips)  # the random model's output too


@pytest.mark.parametrize("loop_guard", [True, False])
def test_batched_rows_stay_independent(looping, loop_guard):
    clips = [noise(seconds, seed=i) for i, seconds in enumerate((0.5, 3.0, 8.0, 2.0))]
    batched = looping(clips, batch_size=4, loop_guard=loop_guard)
    assert batched == looping(clips, batch_size=1, loop_guard=loop_guard)
    caps = [looping.model.config.max_new_tokens_for(clip.size) for clip in clips]
    counts = [result["text"].count("water") for result in batched]
    assert counts == ([1] * 4 if loop_guard else [cap // 3 for cap in caps])  # each row's own duration cap
    assert len(set(counts)) == (1 if loop_guard else 4)


WORDS = {word: index for index, word in enumerate("the best of very no , a b c d e f g h i j k l m".split(), start=3)}


def ids(text: str) -> list[int]:
    return [WORDS[word] for word in text.split()]


@pytest.mark.parametrize(
    "text",
    [
        "the best of the best",
        "very very",
        "no no no no",
        "no , no , no , no , no",
        "a b c d e f g h i j k l m a b c d e f g h i j k l m",  # a long phrase said twice
    ],
)
def test_legitimate_repeats_survive(text):
    guard = LoopGuard(prompt_length=0)
    assert guard.trim(ids(text)) == ids(text)
    assert not guard(torch.tensor([ids(text)]), None).item()


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("a b" + " the best of" * 6, "a b the best of"),
        ("a b" + " the best of" * 6 + " the", "a b the best of"),  # a partial copy goes too
        (" ".join(["very"] * 16), "very"),
        ("no , " * 8, "no ,"),
        ("a b c d e f g h i j k l m a b c d e f g h i j k l m a b c d e f g h i j k l m", "a b c d e f g h i j k l m"),
    ],
)
def test_loops_are_trimmed_to_one_copy(text, kept):
    guard = LoopGuard(prompt_length=0)
    assert guard.trim(ids(text)) == ids(kept)


def stopped_text(guard: LoopGuard, tokenizer, text: str) -> str:
    """What the pipeline keeps of a model that writes `text`: the guard stops it token by token, then trims it."""
    tokens = tokenizer(text, add_special_tokens=False).input_ids
    stop = next((n for n in range(1, len(tokens) + 1) if guard(torch.tensor([tokens[:n]]), None).item()), len(tokens))
    return tokenizer.decode(guard.trim(tokens[:stop]))


@pytest.mark.parametrize("text", ["The budget was 1,000,000,000 dollars last year.", "She said no, no, no, no, no."])
def test_numbers_and_short_words_said_again_are_not_loops(tiny_random, text):
    tokenizer = tiny_random[1].tokenizer
    assert stopped_text(LoopGuard(prompt_length=0, tokenizer=tokenizer), tokenizer, text) == text


def test_a_loop_of_whole_sentences_keeps_exactly_the_first(tiny_random):
    """The first copy starts without the space that the later ones have ("he" where they say " he")."""
    tokenizer = tiny_random[1].tokenizer
    guard = LoopGuard(prompt_length=0, tokenizer=tokenizer)
    assert stopped_text(guard, tokenizer, "he said all of it." + " he said all of it." * 5) == "he said all of it."


def test_a_loop_of_words_stops_even_with_numbers_exempt(tiny_random):
    tokenizer = tiny_random[1].tokenizer
    guard = LoopGuard(prompt_length=0, tokenizer=tokenizer)
    assert stopped_text(guard, tokenizer, "It was 1,000" + " the best of" * 20) == "It was 1,000 the best of"
    assert stopped_text(guard, tokenizer, " no," * 20) == " no,"


def test_stopping_is_judged_row_by_row():
    guard = LoopGuard(prompt_length=2)
    rows = torch.tensor(
        [
            [0, 0, *ids("a b" + " the best of" * 6)],
            [0, 0, *ids("b" + " the best of" * 6 + " c")],
            [0, 0, *ids("no " * 20)],
        ]
    )
    assert guard(rows, None).tolist() == [True, False, True]


def test_parameters_come_from_the_model_config():
    guard = LoopGuard.from_config(5, ASRConfig(loop_min_repeats=4, loop_max_period=3))
    assert (guard.prompt_length, guard.max_period, guard.min_repeats, guard.min_tokens) == (5, 3, 4, 16)
    assert guard.trim(ids("the best of the best of the best of")) == ids("the best of the best of the best of")
    with pytest.raises(ValueError, match="min_repeats >= 2"):
        LoopGuard(0, min_repeats=1)


@pytest.fixture(scope="module")
def reading_model():
    """A tiny random model whose LLM reads a `TokenReadout` (given its tokens by the CTC warm-up), and its processor."""
    model, processor = build("tiny-random", projector_output="ctc_tokens")
    CTCWarmup(model, processor, scan(synthetic_tones("train", 4), SkipCounter("tones"), 30.0))
    return model.eval(), processor


@pytest.mark.parametrize("reading", [" see the water", " see the cold water", " water see the", ""])
def test_a_looping_model_writes_the_words_of_its_reading_once(reading_model, reading):
    model, processor = reading_model
    asr = ASRPipeline(model=scripted_model(model, processor, PHRASE, then_end=False), processor=processor)
    reading_ids = processor.tokenizer(reading, add_special_tokens=False, return_tensors="pt").input_ids
    clip = noise(5.0, seed=1)
    assert spoken_form(asr(clip, reading_ids=reading_ids, loop_guard=False)["text"]) == reading
    free = asr(clip, reading_ids=reading_ids, loop_guard=False, follow_reading=False)["text"]
    assert free.startswith(f"{PHRASE.strip()} {PHRASE.strip()}")


def test_every_beam_of_every_clip_keeps_to_its_reading(reading_model):
    model, processor = reading_model
    asr = ASRPipeline(model=scripted_model(model, processor, PHRASE, then_end=False), processor=processor)
    readings = [" see the cold water", " water see the"]
    reading_ids = processor.tokenizer(readings, add_special_tokens=False, padding=True, return_tensors="pt")
    reading_ids = reading_ids.input_ids.masked_fill(reading_ids.attention_mask == 0, -100)
    clips = [noise(5.0, seed=1), noise(5.0, seed=2)]
    results = asr(clips, batch_size=2, reading_ids=reading_ids, loop_guard=False, generate_kwargs={"num_beams": 3})
    assert [spoken_form(result["text"]) for result in results] == readings


def test_a_model_that_says_its_reading_is_left_as_it_is(reading_model):
    model, processor = reading_model
    asr = ASRPipeline(model=scripted_model(model, processor, PHRASE, then_end=True), processor=processor)
    reading_ids = processor.tokenizer(PHRASE, add_special_tokens=False, return_tensors="pt").input_ids
    clip = noise(5.0, seed=1)
    assert (
        asr(clip, reading_ids=reading_ids)["text"]
        == asr(clip, reading_ids=reading_ids, follow_reading=False)["text"]
        == PHRASE.strip()
    )


def test_an_llm_fond_of_apostrophes_still_writes_the_whole_reading(tiny_random):
    """An apostrophe goes where the reading has one ("cats's"), once: a second one ("cats''", which a real model
    wrote) matches no reading, so accepting it would end the transcript with the rest of the reading unwritten."""
    tokenizer, end_of_turn = tiny_random[1].tokenizer, tiny_random[1].end_of_turn_token_id
    reading = " the cats's house"
    reading_ids = tokenizer(reading, add_special_tokens=False, return_tensors="pt").input_ids
    constraint = ReadingConstraint(tokenizer, reading_ids, prompt_length=0, end_token_ids=end_of_turn)
    scores = torch.zeros(len(tokenizer))
    scores[tokenizer("'", add_special_tokens=False).input_ids] = 10.0  # the LLM's favourite token, at every step
    written = []
    while len(written) < 40 and (token := constraint.next_token(0, written, scores)) != end_of_turn:
        written.append(token)
    assert spoken_form(tokenizer.decode(written)) == reading


def test_generate_reads_each_clip_once_and_keeps_to_that_reading(reading_model, monkeypatch):
    """The readout's own reading is what the LLM prefills and what the transcript keeps to, and the encoder runs once
    per batch: the prefill embeds the reading without encoding the audio again."""
    model, processor = reading_model
    batch = processor(audio=[noise(seconds, seed=4) for seconds in (2.0, 6.0)])
    readings = [
        spoken_form(processor.tokenizer.decode(row[row != -100]))
        for row in model.read_audio(batch["input_features"], batch["input_features_mask"])
    ]
    assert any(readings)
    encoder_runs = []
    forward_frozen = model.audio_encoder.forward_frozen
    monkeypatch.setattr(
        model.audio_encoder, "forward_frozen", lambda *args: encoder_runs.append(1) or forward_frozen(*args)
    )
    generated = model.generate(
        **batch, tokenizer=processor.tokenizer, eos_token_id=processor.end_of_turn_token_id, max_new_tokens=100
    )
    texts = processor.batch_decode(generated[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    assert [spoken_form(text) for text in texts] == readings
    assert encoder_runs == [1]


def test_a_beam_of_readings_is_rescored_by_the_llm(reading_model):
    """Of a clip's CTC readings, the best one by CTC alone wins without the LLM's weight; with it, the reading that the
    LLM would say outweighs a small CTC lead."""
    model, processor = reading_model
    model = scripted_model(model, processor, PHRASE, then_end=True)
    said = processor.tokenizer(PHRASE, add_special_tokens=False).input_ids
    unsaid = processor.tokenizer(" water see the", add_special_tokens=False).input_ids
    beams = [(unsaid, -1.0), (said, -3.0)]
    model.config.reading_lm_weight = 0.0
    assert model.best_reading(beams) == unsaid
    model.config.reading_lm_weight = 0.3
    assert model.best_reading(beams) == said
    assert model.best_reading([([], -0.1), ([], -2.0)]) == []


def test_a_beam_reading_is_one_of_the_clip_s_ctc_readings(reading_model):
    """With `reading_beam_size` > 1, `read_audio` returns, padded with -100, the reading `best_reading` picks from the
    clip's beam: without the LLM's weight or the length bonus, the likeliest reading by CTC."""
    model = copy.deepcopy(reading_model[0])
    processor = reading_model[1]
    model.config.reading_beam_size, model.config.reading_lm_weight, model.config.reading_length_bonus = 4, 0.0, 0.0
    batch = processor(audio=[noise(seconds, seed=4) for seconds in (2.0, 6.0)])
    frames, lengths = model.project_audio(batch["input_features"], batch["input_features_mask"])
    beams = model.projector.readout.beam_readings(frames, lengths, model.get_input_embeddings().weight, 4)
    reading_ids = model.read_audio(batch["input_features"], batch["input_features_mask"])
    assert [row[row != -100].tolist() for row in reading_ids] == [clip_beams[0][0] for clip_beams in beams]
    assert all(len(clip_beams) == 4 for clip_beams in beams) and reading_ids.shape[1] > 0


def test_keeping_to_the_reading_without_an_end_of_turn_is_refused(reading_model):
    model = copy.deepcopy(reading_model[0])
    processor = reading_model[1]
    model.generation_config.eos_token_id = None
    with pytest.raises(ValueError, match="needs an end of turn: pass eos_token_id"):
        model.generate(**processor(audio=[noise(1.0)]), tokenizer=processor.tokenizer)
