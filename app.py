"""Tiny Audio demo: a Gradio page that transcribes uploaded or recorded speech (the file a Hugging Face Space runs).

    python app.py                                    # serves $ASR_MODEL, else outputs/demo/ when it exists
    python app.py --model outputs/demo --host 127.0.0.1 --port 7860 --max-seconds 300

The model is loaded with `pipeline("automatic-speech-recognition", model=..., trust_remote_code=True)`, so `--model`
may be a local folder or a Hub id. The transcript streams while it is generated; long audio is split at quiet points
and shown as timestamped segments, with the real-time factor of the run. One request runs at a time (queue).
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
from pathlib import Path

import gradio as gr
import soundfile as sf
import torch
from transformers import pipeline

HERE = Path(__file__).resolve().parent
DEMO_MODEL = HERE / "outputs" / "demo"
DEFAULT_CACHE = HERE / "outputs" / "app"
DEFAULT_MAX_SECONDS = 300.0
EXAMPLE_TEXT = "Hello! This is Tiny Audio, a small speech recognition model. Try it with your own voice."
SEGMENT_HEADERS = ["start (s)", "end (s)", "text"]

logger = logging.getLogger("tiny_audio.app")


def default_model() -> str | None:
    """`$ASR_MODEL`, else `outputs/demo/` when it exists, else None."""
    if os.environ.get("ASR_MODEL"):
        return os.environ["ASR_MODEL"]
    return str(DEMO_MODEL) if DEMO_MODEL.is_dir() else None


def example_clip(cache_dir: Path) -> Path | None:
    """A short spoken example: espeak-ng speech written once into `cache_dir`, else a local test-corpus clip."""
    path = cache_dir / "example.wav"
    if path.is_file():
        return path
    try:
        from tiny_audio.speech_corpus import SAMPLE_RATE, synthesize

        audio = synthesize(EXAMPLE_TEXT)
        cache_dir.mkdir(parents=True, exist_ok=True)
        sf.write(path, audio, SAMPLE_RATE)
        return path
    except (ImportError, RuntimeError, OSError) as error:
        logger.warning("no synthetic example clip (%s); looking for a test clip of the speech corpus", error)
    return next(iter(sorted((HERE / "outputs" / "speech_corpus" / "test").glob("*.flac"))), None)


def audio_seconds(path: str) -> float | None:
    """Duration of an audio file, or None when soundfile cannot read it (the pipeline then says why)."""
    try:
        info = sf.info(path)
    except Exception:  # noqa: BLE001 - any unreadable file is reported by the pipeline's own clear error
        return None
    return info.frames / info.samplerate if info.samplerate else None


def load_pipeline(model: str):
    device = 0 if torch.cuda.is_available() else -1
    return pipeline("automatic-speech-recognition", model=model, trust_remote_code=True, device=device)


def make_transcriber(pipe, max_seconds: float):
    """The page's event handler: audio file path -> stream of (transcript, segments, status)."""
    model_lock = threading.Lock()  # the queue runs one request at a time; this also covers a run a client left

    def run(audio_path):
        if not audio_path:
            raise ValueError("no audio: upload a file or record one with the microphone first")
        seconds = audio_seconds(audio_path)
        if seconds is not None and seconds > max_seconds:
            raise ValueError(f"the audio is {seconds:.1f} s long; this demo accepts at most {max_seconds:g} s")
        status = f"Transcribing {seconds:.1f} s of audio…" if seconds else "Transcribing…"
        yield "", [], status

        streamer = pipe.transcript_streamer()  # the pipeline closes it when the call ends, error or not
        outcome = {}

        def work():
            try:
                with model_lock:
                    outcome["result"] = pipe(audio_path, return_timestamps=True, streamer=streamer)
            except Exception as error:  # noqa: BLE001 - re-raised in the request below
                outcome["error"] = error

        start = time.perf_counter()
        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        text = ""
        for piece in streamer:
            if piece:
                text += piece
                yield text, [], status
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        elapsed = time.perf_counter() - start
        result = outcome["result"]
        rows = [[round(c["timestamp"][0], 2), round(c["timestamp"][1], 2), c["text"]] for c in result["chunks"]]
        seconds = seconds or (result["chunks"][-1]["timestamp"][1] if result["chunks"] else 0.0)
        rtf = f"real-time factor {elapsed / seconds:.3f}" if seconds else "real-time factor n/a"
        pieces = f", {len(rows)} segments" if len(rows) > 1 else ""
        yield result["text"], rows, f"Done: {seconds:.1f} s of audio in {elapsed:.2f} s, {rtf}{pieces}."

    def transcribe(audio_path):
        try:
            yield from run(audio_path)
            return
        except ValueError as error:  # InvalidAudioError and our own checks: the user's input, not a bug
            message = str(error)
        except Exception as error:  # noqa: BLE001 - shown on the page; the server keeps running
            logger.exception("transcription failed")
            message = f"transcription failed ({type(error).__name__}: {error})"
        if audio_path:  # name the upload as the user knows it, not by its temporary server path
            message = message.replace(str(audio_path), Path(audio_path).name)
        yield "", [], f"Error: {message}"
        raise gr.Error(message, print_exception=False)

    return transcribe


def build_demo(model_path: str | None, max_seconds: float = DEFAULT_MAX_SECONDS, cache_dir: str | Path | None = None):
    """The demo page for `model_path` (folder or Hub id); a page with an explanation when it cannot be loaded."""
    pipe, problem = None, None
    if not model_path:
        problem = (
            "No model found. Train one into `outputs/demo/`, or point the app at a model folder or Hub id with "
            "`python app.py --model PATH_OR_ID` or the `ASR_MODEL` environment variable."
        )
    else:
        try:
            pipe = load_pipeline(model_path)
        except Exception as error:  # noqa: BLE001 - shown on the page instead of a traceback
            logger.exception("could not load %s", model_path)
            where = "" if Path(model_path).is_dir() else " (no such folder here, so it was looked up on the Hub)"
            problem = f"Could not load the model `{model_path}`{where}: {type(error).__name__}: {error}"

    with gr.Blocks(title="Tiny Audio") as demo:
        gr.Markdown(
            "# Tiny Audio\nSpeech recognition with a small speech-LLM: Whisper encoder → projector → language model."
        )
        if pipe is None:
            gr.Markdown(f"### ⚠️ No model loaded\n\n{problem}", elem_id="model-error")
            return demo
        gr.Markdown(f"Model: `{model_path}` · upload or record up to {max_seconds:g} s of audio.")
        transcribe = make_transcriber(pipe, max_seconds)
        with gr.Row():
            with gr.Column():
                audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Audio", elem_id="audio")
                button = gr.Button("Transcribe", variant="primary", elem_id="transcribe")
            with gr.Column():
                transcript = gr.Textbox(label="Transcript", lines=5, buttons=["copy"], elem_id="transcript")
                status = gr.Textbox(label="Status", interactive=False, elem_id="status")
                segments = gr.Dataframe(
                    headers=SEGMENT_HEADERS, datatype=["number", "number", "str"], label="Segments",
                    interactive=False, elem_id="segments",
                )  # fmt: skip
        outputs = [transcript, segments, status]
        # Both triggers share one concurrency group, so the model never runs twice at once.
        button.click(transcribe, audio, outputs, api_name="transcribe", concurrency_id="model")
        clip = example_clip(Path(cache_dir or os.environ.get("ASR_APP_CACHE") or DEFAULT_CACHE))
        if clip is not None:
            examples = gr.Examples([[str(clip)]], inputs=audio, example_labels=["Example clip (click to transcribe)"])
            examples.load_input_event.then(transcribe, audio, outputs, concurrency_id="model", api_visibility="private")
    demo.queue(default_concurrency_limit=1)  # one transcription at a time; other users wait in line
    return demo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=default_model(), help="model folder or Hub id (default: %(default)s)")
    parser.add_argument("--host", default=None, help="address to listen on (default: gradio's, 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: gradio's, 7860 or the next free one)")
    parser.add_argument(
        "--max-seconds", type=float, default=float(os.environ.get("ASR_MAX_SECONDS", DEFAULT_MAX_SECONDS)),
        help="longest audio accepted, in seconds (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("--cache-dir", default=None, help="where the example clip is written (default: outputs/app)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    demo = build_demo(args.model, max_seconds=args.max_seconds, cache_dir=args.cache_dir)
    _, url, _ = demo.launch(server_name=args.host, server_port=args.port, prevent_thread_lock=True)
    print(f"Tiny Audio demo: {url}", flush=True)
    demo.block_thread()


if __name__ == "__main__":
    main()
