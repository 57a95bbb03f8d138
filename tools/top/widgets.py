"""Console pieces: confirmation and input dialogs, the sparkline, keyed table updates."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Input, Label

BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: Iterable[int], width: int = 24) -> str:
    pts = list(values)[-width:]
    if not pts:
        return ""
    lo, hi = min(pts), max(pts)
    if hi == lo:
        return BARS[3] * len(pts)
    return "".join(BARS[(v - lo) * (len(BARS) - 1) // (hi - lo)] for v in pts)


def sync_table(
    table: DataTable, rows: Mapping[str, Sequence[object]], *, keep: str | None = None, gone: str | None = None
) -> None:
    """Make `table` show exactly `rows` (key -> cells), in order, keeping the cursor on its row.

    `keep`: the row the cursor was on before the caller cleared the table (e.g. for new columns); by default
    the row under the cursor. When that row is gone the cursor goes to `gone` (a row that selects nothing),
    else to the first row: a key acting on the selected row must not silently act on another one."""
    if keep is None and table.row_count:
        keep = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
    if [k.value for k in table.rows] != list(rows):
        table.clear()
        for key, cells in rows.items():
            table.add_row(*cells, key=key)
        target = keep if keep in rows else gone if keep is not None and gone in rows else None
        if target is not None:
            table.move_cursor(row=list(rows).index(target))
        return
    cols = list(table.columns)
    for key, cells in rows.items():
        for col, value in zip(cols, cells):
            if table.get_cell(key, col) != value:
                table.update_cell(key, col, value, update_width=True)


class ConfirmScreen(ModalScreen[bool]):
    """Yes/no for a dangerous action; Enter does not confirm (it must be a deliberate y)."""

    BINDINGS = [Binding("y", "answer(True)", "yes"), Binding("n,escape", "answer(False)", "no")]
    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    ConfirmScreen > Vertical { width: auto; max-width: 90%; min-width: 40; height: auto; border: thick $error;
                               background: $surface; padding: 1 2; }
    ConfirmScreen Label { width: auto; max-width: 100%; }
    ConfirmScreen Horizontal { height: auto; width: auto; align: center middle; }
    """

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical():
            # plain text, not markup: a reload preview or a card path may hold "[/x]" (that raised, and the
            # console's end stops every agent it supervises) or "[word]" (that vanished from the question)
            yield Label(Text(self.question), id="question", markup=False)
            with Horizontal():
                yield Button("Yes (y)", variant="error", id="yes")
                yield Button("No (n)", variant="primary", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class AskScreen(ModalScreen[str]):
    """One line of input (e.g. the card to start); Escape cancels with ""."""

    BINDINGS = [Binding("escape", "cancel", "cancel")]
    DEFAULT_CSS = """
    AskScreen { align: center middle; }
    AskScreen > Vertical { width: 90%; max-width: 100; height: auto; border: thick $primary; background: $surface;
                           padding: 1 2; }
    AskScreen Label { width: 100%; }
    """

    def __init__(self, prompt: str, value: str = "", placeholder: str = "") -> None:
        super().__init__()
        self.prompt, self.value, self.placeholder = prompt, value, placeholder

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(Text(self.prompt), markup=False)  # plain text: it names a folder
            # a hint, not a value: typing must not replace a pre-filled folder (it used to)
            yield Input(value=self.value, placeholder=self.placeholder, id="answer")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip())

    def action_cancel(self) -> None:
        self.dismiss("")
