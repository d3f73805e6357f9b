"""The child process a lib: port runs in: its library is loaded here, never in the harness's process, so a
segfault, an abort, an exit() or a hang inside it ends (or stalls) this process only, and the harness
reports it as an ERROR of the checks that were waiting (backends/ports.py, LibBackend).

    python -m backends.lib_worker REQUEST_FD REPLY_FD LIBRARY_PATH MODE [DEVICE]

MODE is the precision mode the library runs in (llmc_set_precision: 0 fp32, 1 tf32, 2 bf16); DEVICE, the
GPU it uses (llmc_set_device, before anything touches the GPU: a data-parallel rank's local rank).

Requests and replies are pickled messages on two pipes (send and receive below; numpy arrays travel out of
band, without a second copy). The process's stdout and stderr are the log file the harness gave it: a port
may print what it likes, and the harness shows the log's last lines when the process dies.

    request                                   reply value
    ("hello",)                                {"exports": [llmc.h functions the library has], "name", "build_info"}
    ("model", "params", config, params, B, T) (model id, the configuration the library reports or None,
    ("model", "checkpoint", config, path, B, T) its num_parameters); config: the one the harness expects
    ("call", model id, method, args)          what the NativeModel method returns (backends/base.py's ModelHandle)
    ("close", model id)                       None
    ("kernel", name, args)                    args after the call: the kernel writes its outputs into them
    ("set_num_threads", n)                    None
    ("dist_unique_id",)                       the data-parallel group's id (bytes), made on rank 0
A reply is ("ok", value) or ("error", exception class name, message, LlmcError's code and message or None).
"""

from multiprocessing.connection import Connection
import os
import pickle
import sys

# what each model-handle method needs from the library: a port without one gets that method skipped, by name
METHOD_FUNCTIONS = {
    "forward": ("llmc_forward",),
    "logits": ("llmc_get_logits",),
    "zero_grad": ("llmc_zero_grad",),
    "backward": ("llmc_backward",),
    "grads": ("llmc_get_grads",),
    "params": ("llmc_get_params",),
    "set_params": ("llmc_set_params",),
    "update": ("llmc_update",),
    "optimizer_state": ("llmc_get_optimizer_state",),
    "set_optimizer_state": ("llmc_set_optimizer_state",),
    "save_checkpoint": ("llmc_save_checkpoint",),
    "dist_join": ("llmc_dist_join",),
    "dist_sync_grads": ("llmc_dist_sync_grads",),
    "dist_shard": ("llmc_dist_shard",),
    "dist_mean": ("llmc_dist_mean",),
}


def send(conn, obj):
    """Pickle obj onto conn; contiguous numpy arrays go as raw buffers after the pickle."""
    buffers = []
    head = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    raws = [b.raw() for b in buffers]
    conn.send_bytes(pickle.dumps((head, [r.nbytes for r in raws]), protocol=5))
    for raw in raws:
        conn.send_bytes(raw)


def receive(conn):
    """The next object send() wrote; its arrays are writable, backed by buffers of their own."""
    head, sizes = pickle.loads(conn.recv_bytes())
    buffers = []
    for size in sizes:
        buffer = bytearray(size)
        conn.recv_bytes_into(buffer) if size else conn.recv_bytes()
        buffers.append(buffer)
    return pickle.loads(head, buffers=buffers)


class Worker:
    """The library and its models, answering requests one at a time."""

    def __init__(self, path, mode=0, device=None):
        from native.binding import Library, NativeKernels, default_threads, read_cdef

        self.path, self.mode = path, mode
        self.library = Library(path)  # LibraryUnavailable: the harness says why
        if device is not None:
            self._require("llmc_set_device", purpose=f"running on device {device}")
            self.library.set_device(device)
        self.library.init()
        self.library.activate(mode)
        if self.library.has("llmc_set_num_threads"):
            self.library.set_num_threads(default_threads())
        self.kernels = NativeKernels(self.library, mode)
        self.models, self.next_id = {}, 0
        self.functions = [name for name in _declared_functions(read_cdef()) if self.library.has(name)]

    def _require(self, *functions, purpose):
        from backends.protocol import PortUnsupported

        for name in functions:
            if not self.library.has(name):
                raise PortUnsupported(f"{self.path} does not export {name} ({purpose})")

    def hello(self):
        lib, ffi = self.library.lib, self.library.ffi
        has_name = self.library.has("llmc_backend_name")
        name = ffi.string(lib.llmc_backend_name()).decode(errors="replace") if has_name else "?"
        return {"exports": self.functions, "name": name, "build_info": self.library.build_info()}

    def model(self, how, config, *args):
        """config: what the harness expects (a dict of GPT2Config's fields), standing in where the library
        cannot report its own."""
        import functools

        from reference.model import GPT2Config

        model_class = functools.partial(PortModel, fallback=config and GPT2Config(**config))
        if how == "params":
            params, max_B, max_T = args
            self._require("llmc_model_from_params", purpose="a model from parameters")
            model = self.library.model_from_params(
                GPT2Config(**config), params, max_B, max_T, self.mode, model_class=model_class
            )
        else:
            path, max_B, max_T = args
            self._require("llmc_model_from_checkpoint", purpose="a model from a checkpoint")
            model = self.library.model_from_checkpoint(path, max_B, max_T, self.mode, model_class=model_class)
        self.next_id += 1
        self.models[self.next_id] = model
        reported = None if model.reported_config is None else vars(model.reported_config)
        return self.next_id, reported, model.num_parameters

    def call(self, model_id, method, args):
        self._require(*METHOD_FUNCTIONS[method], purpose=f"the model handle's {method}")
        return getattr(self.models[model_id], method)(*args)

    def dist_unique_id(self):
        self._require("llmc_dist_unique_id", purpose="data parallelism")
        return self.library.dist_unique_id()

    def close(self, model_id):
        model = self.models.pop(model_id, None)
        if model is not None:
            model.close()

    def kernel(self, name, args):
        getattr(self.kernels, name)(*args)
        return args

    def set_num_threads(self, n):
        self._require("llmc_set_num_threads", purpose="setting the thread count")
        self.library.set_num_threads(n)


def _declared_functions(cdef):
    """The function names llmc.h declares, in its order."""
    import re

    return re.findall(r"\b(\w+)\s*\([^()]*\)\s*;", cdef)


def _model_class():
    from native.binding import NativeModel
    from reference.model import GPT2Config

    class PortModel(NativeModel):
        """NativeModel for a library that may lack llmc_model_config, llmc_model_num_parameters or
        llmc_model_free. Sizes come from what the library reports where it can (it writes that many
        values); reported_config is None when it cannot say, and the caller's configuration stands in."""

        def __init__(self, library, handle, mode, fallback):
            self._library, self._mode = library, mode
            self._ffi, self._lib = library.ffi, library.lib
            self._owns = library.has("llmc_model_free")
            self._handle = self._ffi.gc(handle, self._lib.llmc_model_free) if self._owns else handle
            self.reported_config = None
            if library.has("llmc_model_config"):
                cfg = self._ffi.new("llmc_config*")
                self._call("llmc_model_config", cfg)
                self.reported_config = GPT2Config(
                    cfg.max_seq_len, cfg.vocab_size, cfg.padded_vocab_size, cfg.num_layers, cfg.num_heads, cfg.channels
                )
            self.config = self.reported_config or fallback
            self.num_parameters = (
                int(self._lib.llmc_model_num_parameters(self._handle))
                if library.has("llmc_model_num_parameters")
                else self.config.num_parameters
            )
            self._BT = None

        def close(self):
            if self._owns:
                super().close()
            self._handle = None

    return PortModel


PortModel = None  # defined on first use, so importing this module (the harness does) loads no cffi


def _error_reply(error):
    code = getattr(error, "code", None)
    llmc = (code, error.llmc_message) if code is not None and hasattr(error, "llmc_message") else None
    return ("error", type(error).__name__, str(error), llmc)


def serve(requests, replies, path, mode=0, device=None):
    global PortModel
    try:
        worker = Worker(path, mode, device)
    except Exception as e:  # LibraryUnavailable, or the library refused init / mode 0
        send(replies, _error_reply(e))
        return
    PortModel = _model_class()
    send(replies, ("ok", worker.hello()))
    while True:
        try:
            request = receive(requests)
        except EOFError:  # the harness is done
            return
        kind, args = request[0], request[1:]
        try:
            value = getattr(worker, kind)(*args)
        except Exception as e:
            send(replies, _error_reply(e))
        else:
            send(replies, ("ok", value))


def main(argv):
    request_fd, reply_fd, path, mode = int(argv[0]), int(argv[1]), argv[2], int(argv[3])
    device = int(argv[4]) if len(argv) > 4 else None
    serve(Connection(request_fd, writable=False), Connection(reply_fd, readable=False), path, mode, device)


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.stdout.flush()
    os._exit(0)  # no interpreter teardown: a library's atexit or destructor cannot crash it
