"""The notebook's chat box: an ipywidgets view over a `chat.Chat`.

Generation runs in a thread so that Stop (and the rest of the notebook) stays
responsive while the model writes; the transcript redraws as text streams in.
Without a front end (nbgrader autograde) the box is built and shown, and nothing
runs until someone clicks Send.
"""
from __future__ import annotations

import dataclasses
import html
import threading
import time

import ipywidgets as widgets

from . import env, generate, messages
from .chat import Chat, Turn

_STYLE = {"user": "background:#e8f0fe;", "assistant": "background:#f4f4f4;", "notice": "color:#a33;"}
_REDRAW_S = 0.1  # at most ten redraws a second while streaming


def _html(turns: list[Turn], label: str) -> str:
    names = {"user": messages.label("chat.you"), "assistant": label, "notice": messages.label("chat.notice")}
    rows = []
    for turn in turns:
        timing = f"<div style='color:#777;font-size:80%'>{html.escape(turn.timing)}</div>" if turn.timing else ""
        text = html.escape(turn.text).replace("\n", "<br>") or "…"
        rows.append(f"<div class='labkit-{turn.role}' style='{_STYLE[turn.role]}padding:6px 10px;margin:4px 0;"
                    "border-radius:6px'>"
                    f"<b>{names[turn.role]}:</b> {text}{timing}</div>")
    return ("<div class='labkit-transcript' style='max-height:420px;overflow-y:auto'>"
            + ("".join(rows) or f"<i>{messages.label('chat.empty')}</i>") + "</div>")


def notebook_04_graphs(loaded, mine) -> dict:
    """The chat box's graphs in notebook 04: the student's INT8 from notebook 03 (`mine`,
    shown first), FP32 from notebook 02, and the fused INT8 the chat defaults to elsewhere
    (chat_graph.py), built only when picked. Label -> () -> (graph path, loop)."""
    from . import artifacts, fused

    choices = {messages.label("chat.graph_mine"): lambda: (mine, generate.NoCache),
               messages.label("chat.graph_fp32"): lambda: (artifacts.ensure(loaded, "fp32"), generate.NoCache)}
    if not fused.unsupported(loaded.model.config):
        choices[messages.label("chat.graph_fused")] = lambda: (artifacts.ensure(loaded, "fused-int8"),
                                                               generate.cached_loop)
    return choices


class ChatBox:
    """`ChatBox(chat).widget` is what the notebook displays. With `graphs` (label -> a
    function giving (graph, loop), the first being the chat's own), a selector switches
    the graph that answers; the conversation goes on."""

    def __init__(self, chat: Chat, transcript_path: str = "chat_transcript.md", graphs: dict | None = None):
        self.chat, self.transcript_path, self.graphs = chat, transcript_path, graphs or {}
        self.thread: threading.Thread | None = None
        self.transcript = widgets.HTML(_html(chat.transcript, chat.label))
        self.message = widgets.Text(placeholder=messages.label("chat.placeholder"), layout=widgets.Layout(width="60%"))
        self.send_button = widgets.Button(description=messages.label("chat.send"), button_style="primary")
        self.stop_button = widgets.Button(description=messages.label("chat.stop"), disabled=True)
        self.clear_button = widgets.Button(description=messages.label("chat.clear"))
        self.save_button = widgets.Button(description=messages.label("chat.save"), icon="download")
        wide = {"description_width": "initial"}
        self.temperature = widgets.FloatSlider(value=chat.sampling.temperature, min=0, max=1.5, step=0.05,
                                               description=messages.label("chat.temperature"), style=wide)
        self.max_tokens = widgets.IntSlider(value=chat.max_new_tokens, min=8, max=512, step=8,
                                            description=messages.label("chat.max_tokens"), style=wide)
        self.guard = widgets.Checkbox(value=chat.sampling.no_repeat_ngram > 0, indent=False,
                                      description=messages.label("chat.guard"))
        self.system = widgets.Text(value=chat.system or "", description=messages.label("chat.system"),
                                   placeholder=messages.label("chat.template_system"), style=wide,
                                   layout=widgets.Layout(width="90%"))
        self.status = widgets.Label(messages.label("chat.greedy"))
        self.send_button.on_click(lambda _: self.send())
        self.stop_button.on_click(lambda _: self.chat.stop())
        self.clear_button.on_click(lambda _: self.clear())
        self.save_button.on_click(lambda _: self.save())
        self.title = widgets.HTML()
        self._show_title()
        self.graph = widgets.Dropdown(options=list(self.graphs), description=messages.label("chat.graph"),
                                      style=wide, layout=widgets.Layout(width="90%", display="" if graphs else "none"))
        self.graph.add_class("labkit-graphs")
        self._shown = self.graph.value  # the graph answering, as the selector names it
        self.graph.observe(lambda change: change["new"] != self._shown and self.switch(change["new"]), names="value")
        self.widget = widgets.VBox([
            self.title, self.graph, self.transcript,
            widgets.HBox([self.message, self.send_button, self.stop_button]),
            widgets.HBox([self.temperature, self.max_tokens, self.guard]), self.system,
            widgets.HBox([self.clear_button, self.save_button, self.status])])

    def _show_title(self) -> None:
        note = env.int8_kernel_note() if "int8" in self.chat.label.lower() and env.int8_products_saturate() else ""
        self.title.value = (f"<b>{html.escape(messages.label('chat.title', label=self.chat.label))}</b>"
                            + (f"<br><small>{html.escape(note)}</small>" if note else ""))

    def switch(self, label: str) -> None:
        """Answer with the graph `label` of `graphs` from the next message on."""
        if self.thread is not None and self.thread.is_alive():
            self.status.value = messages.label("chat.busy")
            self.graph.value = self._shown
            return
        try:
            graph, loop = self.graphs[label]()
        except Exception as error:  # noqa: BLE001 - a graph that cannot be built is a notice, the chat goes on
            self.chat.notice(messages.say("chat.cannot_use", sep=" / ", graph=label, error=error))
        else:
            if self.chat.use(graph, label, loop):
                self.chat.notice(messages.label("chat.switched", label=label))
                self._shown = label
        self.graph.value = self._shown  # back to the graph still answering, if the switch failed
        self._show_title()
        self.transcript.value = _html(self.chat.transcript, self.chat.label)

    def _ipython_display_(self):
        from IPython.display import display
        display(self.widget)

    def send(self, text: str | None = None, wait: bool = False) -> None:
        """Send the text box's message (or `text`); the reply streams in a thread."""
        if self.thread is not None and self.thread.is_alive():
            self.status.value = messages.label("chat.busy")
            return
        text = self.message.value if text is None else text
        self.message.value = ""
        guard = generate.CHAT if self.guard.value else generate.GREEDY
        self.chat.sampling = dataclasses.replace(self.chat.sampling, temperature=self.temperature.value, seed=None,
                                                 repetition_penalty=guard.repetition_penalty,
                                                 no_repeat_ngram=guard.no_repeat_ngram)
        self.chat.max_new_tokens = self.max_tokens.value
        self.chat.system = self.system.value.strip() or None
        self.thread = threading.Thread(target=self._answer, args=(text,), daemon=True)
        self.send_button.disabled, self.stop_button.disabled = True, False
        self.thread.start()
        if wait:
            self.thread.join()

    def _answer(self, text: str) -> None:
        last = 0.0

        def redraw(_piece=None, force=False):
            nonlocal last
            if force or time.perf_counter() - last > _REDRAW_S:
                self.transcript.value = _html(self.chat.transcript, self.chat.label)
                last = time.perf_counter()

        try:
            self.status.value = messages.label("chat.answering")
            result = self.chat.send(text, on_text=redraw)
            self.status.value = messages.label("chat.speed", tok_s=result.tok_s, ttft_s=result.ttft_s) if result else ""
        finally:
            redraw(force=True)
            self.send_button.disabled, self.stop_button.disabled = False, True

    def clear(self) -> None:
        self.chat.clear()
        self.transcript.value = _html(self.chat.transcript, self.chat.label)
        self.status.value = messages.label("chat.cleared")

    def save(self) -> None:
        self.status.value = messages.label("chat.saved", path=self.chat.save(self.transcript_path))
