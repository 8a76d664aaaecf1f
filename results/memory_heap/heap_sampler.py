"""Run devft-lab's CLI with a thread that logs, every 2 s, the resident memory (VmRSS), its high-water
mark (VmHWM) and glibc's heap (mallinfo2: bytes in use, heap size, mmapped, free inside the heap), MiB.

    MEMLOG=out.tsv python heap_sampler.py run paper_regime ...        # as devft-lab run ...
    TRIM=1 MEMLOG=out.tsv python heap_sampler.py run paper_regime ... # plus malloc_trim(0) after each client

Written for the diagnosis in README.md (glibc only)."""
import ctypes, gc, os, sys, threading, time
class MI2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL("libc.so.6"); libc.mallinfo2.restype = MI2
out = open(os.environ["MEMLOG"], "w")
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key): return int(line.split()[1]) / 1024
def loop():
    t0 = time.time()
    while True:
        m = libc.mallinfo2()
        out.write(f"{time.time()-t0:.0f}\t{status('VmRSS:'):.0f}\t{status('VmHWM:'):.0f}\t"
                  f"{(m.uordblks + m.hblkhd)/2**20:.0f}\t{m.arena/2**20:.0f}\t{m.hblkhd/2**20:.0f}\t{m.fordblks/2**20:.0f}\n"); out.flush()
        time.sleep(2)
out.write("t\trss\thwm\tinuse\tarena\tmmap\tfree\n")
threading.Thread(target=loop, daemon=True).start()
if os.environ.get("TRIM"):
    import devft_lab.fl.simulation as sim
    _cu = sim.client_update
    def cu(*a, **k):
        r = _cu(*a, **k); t = time.perf_counter(); libc.malloc_trim(0)
        out.write(f"# trim {time.perf_counter()-t:.3f}s\n"); return r
    sim.client_update = cu
from devft_lab.cli import main
sys.argv = ["devft-lab"] + sys.argv[1:]
main()
