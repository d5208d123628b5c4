"""A tiny raw AMQP 0-9-1 client for protocol-level tests.

Real client libraries never send malformed frames, so the protocol-error tests speak the
wire format themselves: build frames byte by byte (possibly wrong on purpose), send them,
and read back what the broker answers. Frame layout (AMQP 0-9-1 section 4.2.3):

    type:octet  channel:short  size:long  payload:size octets  frame-end:octet(0xCE)

Only what the tests need is here: the connection handshake (PLAIN auth), channel.open,
encoders for the argument types, and decoders for connection.start / tune / close,
channel.close and field tables.
"""
import socket
import struct
import time

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"

FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_HEARTBEAT = 8
FRAME_END = 0xCE

# (class_id, method_id) of the methods the tests send or expect.
CONNECTION_START = (10, 10)
CONNECTION_START_OK = (10, 11)
CONNECTION_TUNE = (10, 30)
CONNECTION_TUNE_OK = (10, 31)
CONNECTION_OPEN = (10, 40)
CONNECTION_OPEN_OK = (10, 41)
CONNECTION_CLOSE = (10, 50)
CONNECTION_CLOSE_OK = (10, 51)
CHANNEL_OPEN = (20, 10)
CHANNEL_OPEN_OK = (20, 11)
CHANNEL_CLOSE = (20, 40)
CHANNEL_CLOSE_OK = (20, 41)
EXCHANGE_DECLARE = (40, 10)
QUEUE_DECLARE = (50, 10)
QUEUE_DECLARE_OK = (50, 11)
BASIC_PUBLISH = (60, 40)
BASIC_GET = (60, 70)
BASIC_GET_OK = (60, 71)
BASIC_GET_EMPTY = (60, 72)


# ---------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------

def octet(v):
    return struct.pack(">B", v)


def short(v):
    return struct.pack(">H", v)


def long_(v):
    return struct.pack(">I", v)


def longlong(v):
    return struct.pack(">Q", v)


def shortstr(s):
    data = s.encode() if isinstance(s, str) else s
    return octet(len(data)) + data


def longstr(s):
    data = s.encode() if isinstance(s, str) else s
    return long_(len(data)) + data


def bits(*flags):
    value = 0
    for i, flag in enumerate(flags):
        if flag:
            value |= 1 << i
    return octet(value)


def table(fields=None):
    """Encode a field table; values may be str, bytes, bool, int or nested dict."""
    body = b""
    for key, value in (fields or {}).items():
        body += shortstr(key)
        if isinstance(value, bool):
            body += b"t" + octet(1 if value else 0)
        elif isinstance(value, int):
            body += b"l" + struct.pack(">q", value)
        elif isinstance(value, dict):
            body += b"F" + table(value)
        else:
            body += b"S" + longstr(value)
    return long_(len(body)) + body


def frame(frame_type, channel, payload, end=FRAME_END):
    return octet(frame_type) + short(channel) + long_(len(payload)) + payload + octet(end)


def method_frame(channel, method, args=b"", end=FRAME_END):
    class_id, method_id = method
    return frame(FRAME_METHOD, channel, short(class_id) + short(method_id) + args, end)


def header_frame(channel, body_size, class_id=60, property_flags=0, properties=b""):
    payload = short(class_id) + short(0) + longlong(body_size) + short(property_flags) + properties
    return frame(FRAME_HEADER, channel, payload)


def body_frame(channel, data):
    return frame(FRAME_BODY, channel, data)


def heartbeat_frame():
    return frame(FRAME_HEARTBEAT, 0, b"")


def queue_declare_args(queue, passive=False, durable=False, exclusive=False,
                       auto_delete=False, nowait=False, arguments=None):
    return (short(0) + shortstr(queue) + bits(passive, durable, exclusive, auto_delete, nowait)
            + table(arguments))


def basic_publish_args(exchange="", routing_key="", mandatory=False, immediate=False):
    return short(0) + shortstr(exchange) + shortstr(routing_key) + bits(mandatory, immediate)


def basic_get_args(queue, no_ack=True):
    return short(0) + shortstr(queue) + bits(no_ack)


# ---------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------

class Reader:
    def __init__(self, data):
        self.data = data
        self.pos = 0

    def take(self, n):
        if self.pos + n > len(self.data):
            raise ValueError("truncated AMQP data")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt):
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, self.take(size))[0]

    def octet(self):
        return self.unpack(">B")

    def short(self):
        return self.unpack(">H")

    def long(self):
        return self.unpack(">I")

    def longlong(self):
        return self.unpack(">Q")

    def shortstr(self):
        return self.take(self.octet()).decode("utf-8", "replace")

    def longstr(self):
        return self.take(self.long())

    def table(self):
        inner = Reader(self.longstr())
        result = {}
        while inner.pos < len(inner.data):
            key = inner.shortstr()
            result[key] = inner.field_value()
        return result

    def field_value(self):
        kind = self.take(1)
        simple = {b"b": ">b", b"B": ">B", b"s": ">h", b"u": ">H", b"I": ">i", b"i": ">I",
                  b"l": ">q", b"L": ">Q", b"f": ">f", b"d": ">d", b"T": ">Q"}
        if kind in simple:
            return self.unpack(simple[kind])
        if kind == b"t":
            return bool(self.octet())
        if kind == b"S":
            return self.longstr().decode("utf-8", "replace")
        if kind == b"x":
            return self.longstr()
        if kind == b"F":
            return self.table()
        if kind == b"A":
            inner = Reader(self.longstr())
            items = []
            while inner.pos < len(inner.data):
                items.append(inner.field_value())
            return items
        if kind == b"D":
            scale = self.octet()
            return (scale, self.unpack(">i"))
        if kind == b"V":
            return None
        raise ValueError(f"unknown field type {kind!r}")


class Method:
    def __init__(self, channel, class_id, method_id, args):
        self.channel = channel
        self.class_id = class_id
        self.method_id = method_id
        self.args = args

    @property
    def key(self):
        return (self.class_id, self.method_id)

    def close_reason(self):
        """(reply_code, reply_text, class_id, method_id) of a connection/channel close."""
        r = Reader(self.args)
        return r.short(), r.shortstr(), r.short(), r.short()

    def __repr__(self):
        return f"Method(ch={self.channel}, {self.class_id}.{self.method_id}, {self.args[:40]!r})"


class ConnectionStart:
    def __init__(self, args):
        r = Reader(args)
        self.version_major = r.octet()
        self.version_minor = r.octet()
        self.server_properties = r.table()
        self.mechanisms = r.longstr().decode().split()
        self.locales = r.longstr().decode().split()


class Tune:
    def __init__(self, args):
        r = Reader(args)
        self.channel_max = r.short()
        self.frame_max = r.long()
        self.heartbeat = r.short()


# ---------------------------------------------------------------------------
# Client
# ---------------------------------------------------------------------------

class BrokerClosed(Exception):
    """The broker closed the TCP connection."""


class RawClient:
    def __init__(self, host, port, timeout=5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        self.start = None
        self.tune = None

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data):
        self.sock.sendall(data)

    def send_method(self, channel, method, args=b""):
        self.send(method_frame(channel, method, args))

    # -- reading -------------------------------------------------------------

    def _fill(self, n, deadline):
        while len(self.buffer) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout("timed out waiting for data from the broker")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise BrokerClosed(f"connection closed by broker (buffered {self.buffer!r:.80})")
            self.buffer += chunk

    def recv_exact(self, n, timeout=5.0):
        self._fill(n, time.monotonic() + timeout)
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def recv_frame(self, timeout=5.0):
        """Returns (type, channel, payload); checks the frame-end octet."""
        deadline = time.monotonic() + timeout
        self._fill(7, deadline)
        frame_type, channel, size = struct.unpack(">BHI", self.buffer[:7])
        self._fill(7 + size + 1, deadline)
        payload = self.buffer[7:7 + size]
        end = self.buffer[7 + size]
        self.buffer = self.buffer[7 + size + 1:]
        if end != FRAME_END:
            raise ValueError(f"bad frame end {end:#x} from broker")
        return frame_type, channel, payload

    def recv_method(self, timeout=5.0):
        """Next method frame, skipping heartbeats and content frames."""
        deadline = time.monotonic() + timeout
        while True:
            frame_type, channel, payload = self.recv_frame(max(0.0, deadline - time.monotonic()))
            if frame_type == FRAME_METHOD:
                class_id, method_id = struct.unpack(">HH", payload[:4])
                return Method(channel, class_id, method_id, payload[4:])

    def expect(self, method, timeout=5.0):
        got = self.recv_method(timeout)
        if got.key != method:
            raise AssertionError(f"expected method {method}, got {got!r}")
        return got

    def wait_connection_close(self, timeout=5.0, reply_close_ok=True):
        """Read until connection.close; returns (code, text, class_id, method_id)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.recv_method(max(0.0, deadline - time.monotonic()))
            if got.key == CONNECTION_CLOSE:
                reason = got.close_reason()
                if reply_close_ok:
                    try:
                        self.send_method(0, CONNECTION_CLOSE_OK)
                    except OSError:
                        pass
                return reason

    def wait_eof(self, timeout=5.0):
        """Read (and drop) until the broker closes the socket. True if it did in time."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                return False
            except (ConnectionResetError, BrokenPipeError):
                return True
            if not chunk:
                return True
            self.buffer += chunk

    # -- handshake -----------------------------------------------------------

    def handshake(self, user="guest", password="guest", vhost="/", heartbeat=0,
                  frame_max=None, channel_max=None, open_connection=True):
        """Protocol header through connection.open-ok. Returns the server's Tune.

        frame_max/channel_max default to the server's proposals (0 would mean "no
        limit", which RabbitMQ refuses when it has a limit of its own)."""
        self.send(PROTOCOL_HEADER)
        self.start = ConnectionStart(self.expect(CONNECTION_START).args)
        response = b"\x00" + user.encode() + b"\x00" + password.encode()
        client_props = {"product": "warren-raw-test",
                        "capabilities": {"authentication_failure_close": True}}
        self.send_method(0, CONNECTION_START_OK,
                         table(client_props) + shortstr("PLAIN") + longstr(response)
                         + shortstr("en_US"))
        self.tune = Tune(self.expect(CONNECTION_TUNE).args)
        channel_max = self.tune.channel_max if channel_max is None else channel_max
        frame_max = self.tune.frame_max if frame_max is None else frame_max
        self.send_method(0, CONNECTION_TUNE_OK,
                         short(channel_max) + long_(frame_max) + short(heartbeat))
        if open_connection:
            self.send_method(0, CONNECTION_OPEN, shortstr(vhost) + shortstr("") + octet(0))
            self.expect(CONNECTION_OPEN_OK)
        return self.tune

    def open_channel(self, channel=1):
        self.send_method(channel, CHANNEL_OPEN, shortstr(""))
        return self.expect(CHANNEL_OPEN_OK)


def connect(broker, timeout=5.0):
    return RawClient(broker.host, broker.port, timeout)
