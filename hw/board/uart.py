"""8N1 UART receiver and transmitter with byte streams: the host link of the ULX3S (its FTDI USB-UART).

One start bit (0), eight data bits LSB first, one stop bit (1); the line idles high. Both sides count
``divisor`` clock cycles per bit; :func:`baud_divisor` picks it from the clock and the baud rate and
refuses a rate the clock cannot make within 2 %.

The receiver synchronises the line (two flip-flops), starts on a falling edge, checks the start bit
half a bit later (a shorter glitch is ignored), then samples each data bit and the stop bit in the
middle of its bit time. A byte whose stop bit is 0 is not delivered: ``framing_error`` pulses instead,
and the receiver waits for the line to go high again (a break does not produce a stream of bytes). A
byte that completes while the previous one has not been taken is dropped and ``overrun`` pulses.
"""

from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

from ..params import check_int

__all__ = ["MIN_DIVISOR", "MAX_DIVISOR", "baud_divisor", "UartRx", "UartTx"]

#: Fewest clock cycles per bit: mid-bit sampling needs a few samples per bit.
MIN_DIVISOR = 4
MAX_DIVISOR = 1 << 24


def baud_divisor(clk_hz, baud, max_error=0.02):
    """Clock cycles per bit for ``baud`` at ``clk_hz``: the nearest integer.

    Raises
    ------
    ValueError
        If the rates are not positive, the divisor is below :data:`MIN_DIVISOR` (the clock is too slow
        for the rate) or above :data:`MAX_DIVISOR`, or the real rate ``clk_hz / divisor`` is more than
        ``max_error`` (relative) from ``baud``.
    """
    if not (isinstance(clk_hz, (int, float)) and clk_hz > 0 and isinstance(baud, (int, float)) and baud > 0):
        raise ValueError(f"baud_divisor: clk_hz and baud must be positive numbers, got {clk_hz!r}, {baud!r}")
    divisor = round(clk_hz / baud)
    if not MIN_DIVISOR <= divisor <= MAX_DIVISOR:
        raise ValueError(f"baud_divisor: {clk_hz:g} Hz / {baud:g} baud gives {divisor} cycles per bit, outside "
                         f"[{MIN_DIVISOR}, {MAX_DIVISOR}]")
    error = abs(clk_hz / divisor - baud) / baud
    if error > max_error:
        raise ValueError(f"baud_divisor: {clk_hz:g} Hz cannot make {baud:g} baud: divisor {divisor} gives "
                         f"{clk_hz / divisor:.6g} baud, {100 * error:.2f} % off (limit {100 * max_error:g} %)")
    return divisor


class UartTx(wiring.Component):
    """8N1 UART transmitter.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit (:func:`baud_divisor`).

    Attributes
    ----------
    data : In(stream.Signature(8))
        Bytes to send; a byte is taken when the transmitter is idle, and goes out at once.
    tx : Out(1)
        The line (idle high).
    busy : Out(1)
        A byte is being sent.
    """

    def __init__(self, divisor):
        self.divisor = check_int("divisor", divisor, MIN_DIVISOR, MAX_DIVISOR, "UartTx")
        super().__init__({"data": In(stream.Signature(8)), "tx": Out(1, init=1), "busy": Out(1)})

    def elaborate(self, platform):
        m = Module()
        shift = Signal(10)          # stop, data[7:0], start: shifted out LSB first
        bits = Signal(range(11))    # bits left to send
        timer = Signal(range(self.divisor))

        m.d.comb += [self.busy.eq(bits != 0), self.data.ready.eq(bits == 0)]
        with m.If(self.data.valid & self.data.ready):
            m.d.sync += [shift.eq((1 << 9) | (self.data.payload << 1)), bits.eq(10), timer.eq(0),
                         self.tx.eq(0)]
        with m.Elif(bits != 0):
            with m.If(timer == self.divisor - 1):
                m.d.sync += [timer.eq(0), bits.eq(bits - 1), shift.eq(shift >> 1)]
                # The next bit (the stop bit's successor is the idle level, 1).
                m.d.sync += self.tx.eq((shift >> 1)[0] | (bits == 1))
            with m.Else():
                m.d.sync += timer.eq(timer + 1)
        return m


class UartRx(wiring.Component):
    """8N1 UART receiver with mid-bit sampling (see the module docstring).

    Parameters
    ----------
    divisor : int
        Clock cycles per bit (:func:`baud_divisor`).

    Attributes
    ----------
    rx : In(1)
        The line (asynchronous: synchronised inside).
    data : Out(stream.Signature(8))
        Received bytes; ``valid`` holds until ``ready``.
    framing_error : Out(1)
        One-cycle pulse: a byte's stop bit was 0 (the byte is dropped).
    overrun : Out(1)
        One-cycle pulse: a byte arrived while ``data`` still held the previous one (the new byte is
        dropped).
    """

    def __init__(self, divisor):
        self.divisor = check_int("divisor", divisor, MIN_DIVISOR, MAX_DIVISOR, "UartRx")
        super().__init__({"rx": In(1, init=1), "data": Out(stream.Signature(8)), "framing_error": Out(1),
                          "overrun": Out(1)})

    def elaborate(self, platform):
        m = Module()
        d = self.divisor
        line = Signal(init=1)
        m.submodules.sync = FFSynchronizer(self.rx, line, init=1)

        timer = Signal(range(d))
        bit = Signal(range(8))
        shift = Signal(8)

        # A received byte is handed to `data` a cycle after its stop bit (`done`), so the handshake with
        # the consumer does not share a cycle with the bit timer's compare: the receiver sits by its pin
        # and the consumer across the die (the timer to the link's payload enable, 10.99 ns placed on
        # the ECP5 shell at 7f9b7c7). `shift` holds still until the next start bit, half a bit later.
        done = Signal()
        with m.If(self.data.valid & self.data.ready):
            m.d.sync += self.data.valid.eq(0)
        m.d.sync += [self.framing_error.eq(0), self.overrun.eq(0), done.eq(0)]
        with m.If(done):
            with m.If(self.data.valid & ~self.data.ready):
                m.d.sync += self.overrun.eq(1)
            with m.Else():
                m.d.sync += [self.data.valid.eq(1), self.data.payload.eq(shift)]

        # The timer's compares are flip-flops, set a cycle ahead (`at_half`: timer == d // 2 - 1, `at_end`:
        # timer == d - 1): the shift register and the link's payload sit across the die from the receiver's
        # timer, and the compare went into their enables (12.19 ns placed on the ECP5 shell at 956eb7e).
        at_half, at_end = Signal(), Signal()

        def restart():
            m.d.sync += [timer.eq(0), at_half.eq(d // 2 - 1 == 0), at_end.eq(0)]

        def step():
            m.d.sync += [timer.eq(timer + 1), at_half.eq(timer == d // 2 - 2), at_end.eq(timer == d - 2)]

        # A data bit goes into `shift` a cycle after it is sampled, from two flip-flops (`take` and the
        # sampled level `taken`): the receiver's state and timer flags sit by the pin and the shift register
        # by the link across the die, and their AND reached its eight enables (10.84 and 11.48 ns placed on
        # the ECP5 shell at 142dbaf). The stop bit comes a whole bit later, so `done` still sees all eight.
        take, taken = Signal(), Signal()
        m.d.sync += [take.eq(0), taken.eq(line)]
        with m.If(take):
            m.d.sync += shift.eq((taken << 7) | (shift >> 1))

        with m.FSM(name="uart_rx"):
            with m.State("IDLE"):
                with m.If(~line):
                    restart()
                    m.next = "START"
            with m.State("START"):
                # Half a bit after the falling edge: still low is a start bit, else a glitch.
                with m.If(at_half):
                    restart()
                    m.d.sync += bit.eq(0)
                    with m.If(line):
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "DATA"
                with m.Else():
                    step()
            with m.State("DATA"):
                with m.If(at_end):
                    restart()
                    m.d.sync += [take.eq(1), bit.eq(bit + 1)]
                    with m.If(bit == 7):
                        m.next = "STOP"
                with m.Else():
                    step()
            with m.State("STOP"):
                with m.If(at_end):
                    restart()
                    with m.If(line):
                        m.d.sync += done.eq(1)
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += self.framing_error.eq(1)
                        m.next = "BREAK"
                with m.Else():
                    step()
            with m.State("BREAK"):
                with m.If(line):
                    m.next = "IDLE"
        return m
