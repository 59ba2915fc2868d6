# AMD Kria KV260 (K26 SoM, Zynq UltraScale+ XCK26-SFVC784-2LV-C): timing constraints for the Trillium
# accelerator taken to Vivado as Verilog (`trillium export-verilog --hw tellme-kv260 -o trillium_top.v`).
# The open flow (`trillium build`) does not target this board; this file is for vendor-tool users.
#
# trillium_top's ports (see `trillium export-verilog --help`):
#   clk               the only clock; every register of the accelerator is on it
#   rst               synchronous, active-high reset (sampled on clk)
#   csr__*            AXI4-Lite slave, 16-bit byte addresses, 32-bit data (the CSR map: docs, hw/csr_map.py)
#   axi_rd__*         AXI4 master, read channels (AR, R), 32-bit byte addresses, dram.bus_bits data
#   axi_wr__*         AXI4 master, write channels (AW, W, B)
#   irq               level interrupt: the run is done (status.done)
# The accelerator has no pins: on the KV260 everything connects to the processing system (PS), so there
# are no PACKAGE_PIN / IOSTANDARD constraints here.

# ---------------------------------------------------------------------------------------------------------
# Clock: 250 MHz (tellme-kv260's clock_mhz).
#
# Out-of-context synthesis / implementation of trillium_top alone (to check Fmax):
create_clock -name clk -period 4.000 [get_ports clk]
#
# Inside a block design, clk comes from the PS (pl_clk0 set to 250 MHz, or a Clocking Wizard fed by
# pl_clk0); Vivado then creates that clock's constraint itself from the IP configuration, and the line
# above must not be used (the port is no longer a top-level port). To constrain it by hand there, put it
# on the generating pin instead, e.g.:
#   create_clock -name clk -period 4.000 [get_pins -hier */pl_clk0]

# ---------------------------------------------------------------------------------------------------------
# Reset. rst is synchronous to clk: drive it from a Processor System Reset block (proc_sys_reset) clocked
# by the same clk (its peripheral_reset output, active-high), which synchronises the PS reset
# (pl_resetn0, asynchronous to clk) and holds it for many cycles. Then the rst path is an ordinary
# register-to-register path and needs no exception in the block design.
# Never feed pl_resetn0 (or a button) straight into rst: it is asynchronous to clk.
# In out-of-context runs the port has no source register; declare it asynchronous so it does not limit Fmax:
set_false_path -from [get_ports rst]

# Out-of-context runs: the AXI ports connect to registers outside trillium_top; give them half a period
# of external delay so the report shows internal paths with a realistic margin (in a block design the
# SmartConnect / PS ports are inside the design and are timed directly).
set_input_delay  -clock clk 2.000 [get_ports -filter {DIRECTION == IN && NAME != clk && NAME != rst}]
set_output_delay -clock clk 2.000 [get_ports -filter {DIRECTION == OUT}]

# ---------------------------------------------------------------------------------------------------------
# How the AXI ports connect to the Zynq PS (block design; comments only):
#
#  * DRAM master (axi_rd__* + axi_wr__*, one AXI4 master split into read and write channel groups):
#    wrap trillium_top in a Verilog module that renames the ports to m_axi_<channel signal> (e.g.
#    axi_rd__araddr -> m_axi_araddr, axi_wr__wdata -> m_axi_wdata) so Vivado infers one AXI4 master
#    interface, then connect it through an AXI SmartConnect to the PS's high-performance slave ports
#    S_AXI_HP0_FPD .. S_AXI_HP3_FPD (set to 128 bits; or S_AXI_HPC0/1_FPD for cache-coherent access).
#    tellme-kv260's 1024-bit port (bus_bits) is wider than one HP port: the SmartConnect down-sizes it
#    to one 128-bit port (bandwidth-limited); TeLLMe spreads traffic over three ports, which the top level
#    does not do yet (docs/architecture.md, "The KV260's three ports"). The master's 32-bit addresses
#    reach the low 2 GiB of the PS DDR (0x0000_0000 - 0x7FFF_FFFF); place the accelerator's DRAM image
#    there (a reserved-memory / CMA region). IDs are 1 bit wide; awcache/arcache/awprot are not driven by
#    the accelerator: tie AxCACHE to 0b0011 (or 0b1111 on HPC ports) and AxPROT to 0 in the wrapper.
#  * CSR slave (csr__*, AXI4-Lite, 16-bit addresses): from the PS master port M_AXI_HPM0_LPD (or
#    M_AXI_HPM0_FPD) through a SmartConnect (it converts AXI4 to AXI4-Lite and the PS's 32/64/128-bit data
#    to 32 bits); assign it a 64 KiB window in the address editor, e.g. 0x8000_0000 (LPD: 0x8000_0000 -
#    0x9FFF_FFFF). The driver reads the id CSR first (the hardware config hash) to refuse a wrong bitstream.
#  * irq -> pl_ps_irq0[0] (through an xlconcat if more interrupts share it); level-sensitive, active-high.
#  * If the PS ports run on another clock than clk, the SmartConnect (with two clock inputs) does the
#    crossing; its own constraints come with the IP. Keep clk and the PS AXI clocks in separate
#    asynchronous groups only if a clock-crossing IP sits between them:
#      set_clock_groups -asynchronous -group [get_clocks clk] -group [get_clocks clk_pl_1]
