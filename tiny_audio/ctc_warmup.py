"""Stage 0: warm-start the projector with CTC against the LLM's own frozen token embeddings.

A projector trained from scratch into a frozen LLM sits on an "ignore the audio" plateau for a long time. Here each
audio frame is pushed towards the embedding of the token spoken there: the classes of a `TokenReadout` are the LLM's
input embeddings (cosine similarity times a learned scale, plus a learned blank; with a learned vector of each token's
spelling added when the config asks for it), restricted to the tokens of the training transcripts in their
`spoken_form` (lower case, no punctuation: what can be heard). No LLM forward runs, so a step costs a small fraction
of a normal one. When the frozen bases run in bfloat16 (a device that computes it natively), the projector runs
under bfloat16 autocast; the trained weights and the optimizer stay float32. A model with
`projector_output="ctc_tokens"` keeps that readout, and feeds the LLM what it reads; otherwise it is dropped after
training, unless a CTC auxiliary loss keeps it as the fixed reference of the LLM stage.
"""

import logging
import math

import torch
from torch import nn
from tqdm.auto import tqdm

from modeling_asr import TokenReadout
from processing_asr import IGNORE_INDEX, load_audio
from tiny_audio.data import length_grouped_batches, spoken_tokens
from tiny_audio.parameter_groups import audio_parameters, trained_encoder_parameters

logger = logging.getLogger(__name__)
BLANK = 0


def teaching_rows(grad: torch.Tensor, tolerance: float, rest_share: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, weights): the fewest rows of `grad` (frames, classes) that hold all but `tolerance` of its squared norm,
    weight 1, and a random `rest_share` of the other rows, weight 1 / `rest_share`, so that their sum stays unbiased."""
    energy = grad.float().pow(2).sum(-1)
    order = energy.argsort(descending=True)
    cumulative = energy[order].cumsum(0)
    teaching = int((cumulative < (1 - tolerance) * cumulative[-1]).sum()) + 1
    rest = order[teaching:]
    sampled = rest[torch.rand(len(rest), device=rest.device) < rest_share]
    weights = torch.cat(
        [energy.new_ones(teaching), energy.new_full((len(sampled),), 1 / rest_share if rest_share else 0)]
    )
    return torch.cat([order[:teaching], sampled]), weights


class TeachingFramesSimilarity(torch.autograd.Function):
    """`frames @ class_vectors_t`, whose backward goes through the frames that still teach and a sample of the others.

    A frame's CTC gradient on its logits is its softmax minus its classes' posterior under the target's alignments:
    once the readout reads a frame with confidence (most frames are blanks), that difference is close to zero in every
    class. Backward keeps the fewest frames that hold all but `tolerance` of the gradient's squared norm, and a random
    `rest_share` of the others scaled by its inverse (left out, those small gradients add up to a biased step that
    learns less, docs/experiments.md), so its two products (frames x classes x width each, most of a stage 0 step)
    shrink with the frames that still teach. Forward and loss stay exact, and so does every kept frame's gradient: no
    class is left out of it."""

    @staticmethod
    def forward(ctx, frames, class_vectors_t, tolerance: float, rest_share: float) -> torch.Tensor:
        ctx.save_for_backward(frames, class_vectors_t)
        ctx.tolerance, ctx.rest_share = tolerance, rest_share
        return frames @ class_vectors_t

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        frames, class_vectors_t = ctx.saved_tensors
        flat_frames, grad = frames.reshape(-1, frames.shape[-1]), grad.reshape(-1, grad.shape[-1])
        rows, weights = teaching_rows(grad, ctx.tolerance, ctx.rest_share)
        kept_grad = (grad[rows] * weights[:, None].to(grad.dtype)).to(frames.dtype)
        grad_frames = grad_classes = None
        if ctx.needs_input_grad[0]:
            grad_frames = torch.zeros_like(flat_frames).index_copy_(0, rows, kept_grad @ class_vectors_t.T)
            grad_frames = grad_frames.view_as(frames)
        if ctx.needs_input_grad[1]:
            grad_classes = flat_frames[rows].T @ kept_grad
        return grad_frames, grad_classes, None, None


class CTCWarmup:
    """Trains the projector (and any trained encoder layers) alone with CTC on a finite dataset (cached outputs of the
    frozen encoder layers when available). AdamW's beta2 is 0.98 rather than 0.999: its second moment then follows the
    gradients' scale over the last ~50 steps rather than ~1,000, as they shrink while the loss falls
    (docs/experiments.md)."""

    def __init__(
        self,
        model,
        processor,
        dataset,
        encoder_cache=None,
        batch_size=16,
        learning_rate=1e-3,
        encoder_learning_rate_scale=1.0,
        seed=0,
        gradient_tolerance=1e-2,
        gradient_rest_share=0.1,
    ):
        if not (0 <= gradient_tolerance < 1 and 0 <= gradient_rest_share <= 1):
            raise ValueError(
                f"gradient_tolerance must lie in [0, 1) and gradient_rest_share in [0, 1], got {gradient_tolerance} "
                f"and {gradient_rest_share}"
            )
        self.model, self.processor, self.dataset, self.encoder_cache = model, processor, dataset, encoder_cache
        self.gradient_tolerance, self.gradient_rest_share = gradient_tolerance, gradient_rest_share
        tokens = [spoken_tokens(processor.tokenizer, text) for text in dataset["text"]]
        self.vocab = sorted({token for row in tokens for token in row})
        self.class_of = {token: position + 1 for position, token in enumerate(self.vocab)}
        self.targets = [self.classes(row) for row in tokens]
        self.head = model.projector.readout
        if self.head is None:
            llm_embeddings = model.get_input_embeddings().weight
            self.head = TokenReadout(*llm_embeddings.shape).to(llm_embeddings.device)
        self.head.set_tokens(self.vocab, [processor.tokenizer.decode([token]) for token in self.vocab])
        self.audio_parameters = audio_parameters(model)
        encoder = trained_encoder_parameters(model)
        separate_head = [] if self.head is model.projector.readout else list(self.head.parameters())
        groups = [{"params": [*model.projector.parameters(), *separate_head], "lr": learning_rate}]
        groups += [{"params": encoder, "lr": learning_rate * encoder_learning_rate_scale}] if encoder else []
        self.optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.98), weight_decay=0.0, fused=True)
        for group in self.optimizer.param_groups:
            group["initial_lr"] = group["lr"]  # the peak of the cosine schedule in `train`
        self.batches = length_grouped_batches(list(dataset["length"]), batch_size, seed)
        self.bfloat16 = model.get_input_embeddings().weight.dtype == torch.bfloat16

    def autocast(self):
        """bfloat16 matmuls for the projector's training steps when the bases run in bfloat16, else a no-op (the
        readout's similarities follow the LLM table's dtype either way)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bfloat16)

    @property
    def device(self) -> torch.device:
        return self.model.projector.conv1.weight.device

    def _audio_embeddings(self, indices: list[int]):
        if self.encoder_cache is not None:
            cached = [self.encoder_cache[i]["hidden_states"] for i in indices]
            lengths = torch.tensor([c.shape[0] for c in cached], device=self.device)
            hidden = nn.utils.rnn.pad_sequence(cached, batch_first=True).to(self.device, torch.float32)
            inputs = {"mm_encoder_outputs": {"audio": (hidden, lengths)}}
        else:
            batch = self.processor(audio=[load_audio(self.dataset[i]["audio"]) for i in indices]).to(self.device)
            inputs = {"input_features": batch["input_features"], "input_features_mask": batch["input_features_mask"]}
        with self.autocast():
            return self.model.project_audio(**inputs)

    def loss(self, projected: torch.Tensor, lengths: torch.Tensor, targets: list[torch.Tensor]) -> torch.Tensor:
        """CTC loss of projector outputs (batch, frames, llm_dim) with valid `lengths` against class `targets`."""
        logits = self.head(projected, self.model.get_input_embeddings().weight, self.similarity)
        log_probs = logits.log_softmax(-1).transpose(0, 1)
        return nn.functional.ctc_loss(
            log_probs,
            torch.cat(targets).to(log_probs.device),
            lengths,
            torch.tensor([len(t) for t in targets]),
            blank=BLANK,
            zero_infinity=True,
        )

    def similarity(self, frames: torch.Tensor, class_vectors_t: torch.Tensor) -> torch.Tensor:
        """The readout's frames-by-classes product: backward through the frames that hold all but
        `gradient_tolerance` of its gradient and a sample of the others (`TeachingFramesSimilarity`); exact when the
        tolerance is 0."""
        if self.gradient_tolerance:
            return TeachingFramesSimilarity.apply(
                frames, class_vectors_t, self.gradient_tolerance, self.gradient_rest_share
            )
        return frames @ class_vectors_t

    def classes(self, tokens: list[int]) -> torch.Tensor:
        """CTC classes of LLM token ids; a clear error for tokens that no training transcript holds."""
        unknown = sorted({token for token in tokens if token not in self.class_of})
        if unknown:
            raise ValueError(f"transcript tokens {unknown[:10]} are not among the training transcripts' tokens")
        return torch.tensor([self.class_of[token] for token in tokens], dtype=torch.long)

    def targets_from_labels(self, labels: torch.Tensor) -> list[torch.Tensor]:
        """CTC class targets of an LLM batch's labels: the spoken form of each row's transcript (without the
        end-of-turn token)."""
        rows = [self.processor.tokenizer.decode(row[row != IGNORE_INDEX][:-1]) for row in labels]
        return [self.classes(spoken_tokens(self.processor.tokenizer, text)) for text in rows]

    def step(self, indices: list[int]) -> float:
        projected, lengths = self._audio_embeddings(indices)
        loss = self.loss(projected, lengths, [self.targets[i] for i in indices])
        self.optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.audio_parameters, 1.0)
        self.optimizer.step()
        return loss.item()

    def train(self, steps: int, log_every: int = 50, evaluate=None, evaluate_every: int = 0) -> list[dict]:
        """Runs `steps` updates with a cosine-decayed learning rate; returns the logged losses, and every
        `evaluate_every` steps what `evaluate()` returns (a dict of scores, computed with the projector in eval mode)."""
        self.model.projector.train()
        history, running = [], []
        progress = tqdm(range(steps), desc="CTC warm-up")
        for step in progress:
            for group in self.optimizer.param_groups:
                group["lr"] = group["initial_lr"] * 0.5 * (1 + math.cos(math.pi * step / steps))
            running.append(self.step(next(self.batches)))
            if (step + 1) % log_every == 0 or step + 1 == steps:
                entry = {"ctc_step": step + 1, "ctc_loss": sum(running) / len(running)}
                if evaluate is not None and evaluate_every and (step + 1) % evaluate_every == 0:
                    self.model.projector.eval()
                    entry.update(evaluate())
                    self.model.projector.train()
                history.append(entry)
                progress.set_postfix(loss=f"{entry['ctc_loss']:.3f}")
                logger.info(str(entry))
                running = []
        return history

    @torch.no_grad()
    def transcribe(self, clips: list) -> list[str]:
        """Greedy CTC reading of clips (collapse repeats, drop blanks): how well the audio frames alone read."""
        batch = self.processor(audio=clips).to(self.device)
        projected, lengths = self.model.project_audio(batch["input_features"], batch["input_features_mask"])
        readings = self.head.greedy_reading(projected, lengths, self.model.get_input_embeddings().weight)
        return [self.processor.tokenizer.decode(row[row != IGNORE_INDEX]).strip() for row in readings]
