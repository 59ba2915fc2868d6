"""Board shells: the accelerator on a development board (the ULX3S). The host link is ``uart`` (8N1 UART
receiver and transmitter) and ``link`` (the protocol of ``firmware/board_protocol.py``: CSR and DRAM access
over a byte stream); docs/board.md describes the shell."""
