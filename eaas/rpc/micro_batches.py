"""How many micro-batches a gateway splits each decode step into by default (ping-pong overlap of one
micro-batch's attention with the other's expert calls), and the measurement behind the choice.

Measured on one 2-core host, where the gateway and every expert server share the cores
(`python -P benchmarks/disaggregated_vs_monolithic.py --micro-batches 1 2`, both transports, one run; README
"Data-plane transport"): 2 micro-batches were slower than 1 on gRPC and on shared memory at 64 and at 256
sequences. There is no idle hardware to overlap with, so splitting only adds calls. With expert servers
on other machines the overlap has idle hardware to use: pass --micro-batches 2 there and measure.
"""

DEFAULT_MICRO_BATCHES = 1
