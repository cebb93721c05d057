"""A multi-turn chat over an ONNX graph, with no user interface of its own: the
notebook's chat box (`chat_box.py`) and `python -m labkit chat` are views over it,
and the tests drive it directly.

Problems (an empty message, one longer than the context, a missing model file, the
wrong graph, an error inside ONNX Runtime) become notices in the transcript; the
chat keeps working.
"""
from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from . import generate, messages, runtime
from .generate import NoCache, Result, Sampling, TextStream
from .messages import say
from .prompts import CHAT_SYSTEM, render, with_system


@dataclass
class Turn:
    role: str            # "user", "assistant" or "notice"
    text: str
    timing: str = ""


class Chat:
    """Messages in, streamed reply out, with the model's own chat template.

    `context` bounds prompt plus reply in tokens; the oldest turns are dropped to
    make room. Qwen3's thinking mode is off unless `enable_thinking`; its
    `<think>` block is never shown either way. The default sampling is greedy with the
    repetition guard (`generate.CHAT`): a reply that still goes round in circles is stopped,
    with a notice. `system` is the system turn that opens every prompt (`prompts.CHAT_SYSTEM`
    by default; None or "" leaves the model's template to its own default)."""

    def __init__(self, graph, tokenizer, label: str = "model", *, context: int = 2048, max_new_tokens: int = 256,
                 sampling: Sampling = generate.CHAT, system: str | None = CHAT_SYSTEM, enable_thinking: bool = False,
                 loop=NoCache, threads: int | None = None):
        self.tokenizer, self.label, self.context = tokenizer, label, context
        self.max_new_tokens, self.sampling, self.system = max_new_tokens, sampling, system
        self.enable_thinking, self.loop, self.threads = enable_thinking, loop, threads
        self.history: list[dict] = []
        self.graph = ""
        self.transcript: list[Turn] = []
        self.stepper = None
        self._stop = threading.Event()
        vocab = tokenizer.get_vocab()
        self.think = (vocab["<think>"], vocab["</think>"]) if "<think>" in vocab and "</think>" in vocab else None
        self.use(graph, label)

    def use(self, graph, label: str | None = None, loop=None) -> bool:
        """Switch to `graph` (a path or an ONNX Runtime session), with `loop` if given (a
        cached graph needs generate.cached_loop); a notice if it cannot be used."""
        try:
            session = runtime.session(graph, self.threads) if isinstance(graph, (str, Path)) else graph
            self.stepper = (loop or self.loop)(session)
            self.loop = loop or self.loop
        except Exception as error:  # noqa: BLE001 - any failure becomes a notice, the chat goes on
            self.notice(say("chat.cannot_use", graph=graph, error=error))
            return False
        self.label = label or self.label
        self.graph = str(graph) if isinstance(graph, (str, Path)) else getattr(session, "_model_path", "session")
        return True

    def send(self, message: str, on_text=None) -> Result | None:
        """Answer `message`; `on_text` receives the reply as it is produced. Returns
        None (and adds a notice) when there is nothing to answer."""
        message = (message or "").strip()
        if not message:
            return self.notice(say("chat.type_first", sep=" / "))
        if self.stepper is None:
            return self.notice(say("chat.no_model", sep=" / "))
        prompt = self._prompt(self.history + [{"role": "user", "content": message}])
        if prompt is None:
            alone = len(self._render([{"role": "user", "content": message}]))
            return self.notice(say("chat.too_long", sep=" ", tokens=alone, reply=self.max_new_tokens,
                                    context=self.context))
        self.transcript.append(Turn("user", message))
        reply = Turn("assistant", "")
        self.transcript.append(reply)
        self._stop.clear()

        def show(piece):
            reply.text += piece
            if on_text:
                on_text(piece)

        try:
            result = generate.generate(self.stepper, prompt, self.tokenizer, self.max_new_tokens, self.sampling,
                                       on_text=show, should_stop=self._stop.is_set,
                                       stream=TextStream(self.tokenizer, self.think))
        except Exception as error:  # noqa: BLE001
            self.transcript.remove(reply)
            self.transcript.pop()  # the message: it was not answered, so it is not history either
            return self.notice(say("chat.failed", sep=" / ", error=error))
        reply.text = result.text
        reply.timing = result.timing() + (" " + say("chat.stopped", sep=" ") if result.stopped_by == "stop" else "")
        self.history += [{"role": "user", "content": message}, {"role": "assistant", "content": result.text}]
        if result.stopped_by == "repetition":
            self.notice(say("chat.looping", sep=" "))
        return result

    @property
    def system_shown(self) -> str:
        """The system turn as the transcript and the terminal name it."""
        return self.system or messages.label("chat.template_system")

    def stop(self) -> None:
        """Ask a running `send` to finish after the current token (safe from another thread)."""
        self._stop.set()

    def clear(self) -> None:
        self.history.clear()
        self.transcript.clear()

    def markdown(self) -> str:
        names = {"user": f"**{messages.label('chat.you')}**", "assistant": f"**{self.label}**",
                 "notice": f"_{messages.label('chat.notice')}_"}
        lines = []
        for turn in self.transcript:
            lines.append(f"{names[turn.role]}: {turn.text}")
            if turn.timing:
                lines.append(f"<sub>{turn.timing}</sub>")
        return "\n\n".join(lines) + "\n"

    def save(self, path: str | Path = "chat_transcript.md") -> Path:
        path = Path(path)
        about = say("chat.transcript_about", sep="  \n", model=self.label, graph=self.graph,
                    sampling=", ".join(f"{k}={v}" for k, v in asdict(self.sampling).items() if k != "seed"),
                    system=self.system_shown,
                    when=time.strftime("%Y-%m-%d %H:%M"))
        path.write_text(f"# {messages.label('chat.title', label=self.label)}\n\n{about}\n\n" + self.markdown(),
                        encoding="utf-8")
        return path

    def _render(self, messages: list[dict]) -> list[int]:
        return render(self.tokenizer, with_system(self.system, messages), enable_thinking=self.enable_thinking)

    def _prompt(self, messages: list[dict]) -> list[int] | None:
        """The prompt's token ids, dropping the oldest exchanges until the reply fits."""
        while True:
            ids = self._render(messages)
            if len(ids) + self.max_new_tokens <= self.context:
                return ids
            if len(messages) <= 1:
                return None
            messages = messages[2:]

    def notice(self, text: str) -> None:
        self.transcript.append(Turn("notice", text))
        return None


def run_terminal(chat: Chat, read=input, write=print) -> None:
    """The chat in a terminal: Ctrl-C stops a reply, /clear, /save [path], /quit."""
    write(f"{messages.label('chat.title', label=chat.label)}. {say('chat.terminal_help', sep=' ')}")
    write(f"{messages.label('chat.system')}: {chat.system_shown}")
    shown = 0
    while True:
        for turn in chat.transcript[shown:]:  # notices from loading or from the last message
            if turn.role == "notice":
                write(f"[{turn.text}]")
        shown = len(chat.transcript)
        try:
            message = read("you> ")
        except (EOFError, KeyboardInterrupt):
            write("")
            return
        command, _, argument = message.strip().partition(" ")
        if command == "/quit":
            return
        if command == "/clear":
            chat.clear()
            shown = 0
            continue
        if command == "/save":
            write(messages.label("chat.saved", path=chat.save(argument or "chat_transcript.md")))
            continue
        if not message.strip():
            chat.send(message)  # a notice says what to do
            continue
        write(f"{chat.label}> ", end="", flush=True)
        worker = threading.Thread(target=chat.send, args=(message,),
                                  kwargs={"on_text": lambda piece: write(piece, end="", flush=True)}, daemon=True)
        worker.start()
        while worker.is_alive():
            try:
                worker.join(0.1)
            except KeyboardInterrupt:
                chat.stop()
        last = chat.transcript[-1] if chat.transcript else None
        write(f"\n  ({last.timing})" if last is not None and last.role == "assistant" else "")
