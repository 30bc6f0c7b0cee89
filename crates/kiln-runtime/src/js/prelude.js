// Web APIs of the Workers runtime, written over a few native functions, and the entry points
// through which the isolate's event loop calls into JavaScript.
//
// This module is compiled once per process and its default export runs once per isolate with
// `native`, the object of Rust functions (see host.rs). It installs globals and returns the host
// entry points. Neither `native` nor the entry points stay reachable from worker code.
export default function installPrelude(native) {

  const global = globalThis;

  function define(name, value) {
    Object.defineProperty(global, name, {
      value,
      writable: true,
      configurable: true,
      enumerable: false,
    });
  }

  // ---------------------------------------------------------------------------------------
  // DOMException, Event, EventTarget

  const DOM_ERROR_CODES = {
    IndexSizeError: 1,
    NotFoundError: 8,
    NotSupportedError: 9,
    InvalidStateError: 11,
    SyntaxError: 12,
    InvalidAccessError: 15,
    TypeMismatchError: 17,
    SecurityError: 18,
    NetworkError: 19,
    AbortError: 20,
    TimeoutError: 23,
    DataCloneError: 25,
  };

  class DOMException extends Error {
    constructor(message = "", name = "Error") {
      super(message);
      Object.defineProperty(this, "name", { value: String(name), configurable: true, writable: true });
    }
    get code() {
      return DOM_ERROR_CODES[this.name] ?? 0;
    }
  }
  define("DOMException", DOMException);

  class Event {
    #type;
    #defaultPrevented = false;
    constructor(type, init = {}) {
      if (arguments.length === 0) throw new TypeError("Event constructor requires a type");
      this.#type = String(type);
      this.bubbles = Boolean(init.bubbles);
      this.cancelable = Boolean(init.cancelable);
      this.composed = Boolean(init.composed);
      this.timeStamp = Date.now();
      this.target = null;
      this.currentTarget = null;
      this._stop = false;
    }
    get type() {
      return this.#type;
    }
    get defaultPrevented() {
      return this.#defaultPrevented;
    }
    preventDefault() {
      if (this.cancelable) this.#defaultPrevented = true;
    }
    stopImmediatePropagation() {
      this._stop = true;
    }
    stopPropagation() {}
  }
  define("Event", Event);

  class EventTarget {
    #listeners = new Map();
    addEventListener(type, listener, options = {}) {
      if (listener == null) return;
      const once = typeof options === "object" && Boolean(options.once);
      const list = this.#listeners.get(type) ?? [];
      if (list.some((entry) => entry.listener === listener)) return;
      list.push({ listener, once });
      this.#listeners.set(type, list);
      if (typeof options === "object" && options.signal) {
        options.signal.addEventListener("abort", () => this.removeEventListener(type, listener));
      }
    }
    removeEventListener(type, listener) {
      const list = this.#listeners.get(type);
      if (!list) return;
      this.#listeners.set(
        type,
        list.filter((entry) => entry.listener !== listener),
      );
    }
    dispatchEvent(event) {
      event.target = this;
      event.currentTarget = this;
      const handler = this["on" + event.type];
      const list = [...(this.#listeners.get(event.type) ?? [])];
      if (typeof handler === "function") list.unshift({ listener: handler, once: false });
      for (const entry of list) {
        if (entry.once) this.removeEventListener(event.type, entry.listener);
        try {
          if (typeof entry.listener === "function") entry.listener.call(this, event);
          else entry.listener.handleEvent(event);
        } catch (error) {
          reportError(error);
        }
        if (event._stop) break;
      }
      return !event.defaultPrevented;
    }
  }
  define("EventTarget", EventTarget);

  function reportError(error) {
    native.log("error", "Uncaught " + formatValue(error));
  }
  define("reportError", reportError);

  // ---------------------------------------------------------------------------------------
  // console

  function formatValue(value, depth = 0, seen = new Set()) {
    if (typeof value === "string") return depth === 0 ? value : JSON.stringify(value);
    if (value === null || value === undefined) return String(value);
    if (typeof value === "bigint") return value + "n";
    if (typeof value === "symbol") return value.toString();
    if (typeof value === "function") return `[Function: ${value.name || "(anonymous)"}]`;
    if (typeof value !== "object") return String(value);
    if (value instanceof Error) {
      return value.stack ? `${value.name}: ${value.message}\n${value.stack}`.trimEnd() : `${value.name}: ${value.message}`;
    }
    if (seen.has(value)) return "[Circular]";
    if (depth > 4) return Array.isArray(value) ? "[Array]" : "[Object]";
    seen.add(value);
    try {
      if (Array.isArray(value)) {
        return "[ " + value.map((item) => formatValue(item, depth + 1, seen)).join(", ") + " ]";
      }
      if (ArrayBuffer.isView(value)) {
        return `${value.constructor.name}(${value.length ?? value.byteLength}) [ ${Array.from(value.slice ? value.slice(0, 50) : []).join(", ")} ]`;
      }
      if (value instanceof Map) {
        const items = [...value].map(([k, v]) => `${formatValue(k, depth + 1, seen)} => ${formatValue(v, depth + 1, seen)}`);
        return `Map(${value.size}) { ${items.join(", ")} }`;
      }
      if (value instanceof Set) {
        return `Set(${value.size}) { ${[...value].map((v) => formatValue(v, depth + 1, seen)).join(", ")} }`;
      }
      if (value instanceof Date) return value.toISOString();
      const keys = Object.keys(value);
      const name = value.constructor && value.constructor !== Object ? value.constructor.name + " " : "";
      if (keys.length === 0) return name + "{}";
      const items = keys.map((key) => `${/^[A-Za-z_$][\w$]*$/.test(key) ? key : JSON.stringify(key)}: ${formatValue(value[key], depth + 1, seen)}`);
      return `${name}{ ${items.join(", ")} }`;
    } finally {
      seen.delete(value);
    }
  }

  function formatArgs(args) {
    if (args.length === 0) return "";
    let rest = args;
    let out = "";
    if (typeof args[0] === "string" && args[0].includes("%")) {
      let index = 1;
      out = args[0].replace(/%[sdifoOjc%]/g, (match) => {
        if (match === "%%") return "%";
        if (index >= args.length) return match;
        const arg = args[index++];
        switch (match) {
          case "%s":
            return typeof arg === "string" ? arg : formatValue(arg, 1);
          case "%d":
          case "%i":
            return String(parseInt(arg, 10));
          case "%f":
            return String(Number(arg));
          case "%j":
            return JSON.stringify(arg);
          case "%c":
            return "";
          default:
            return formatValue(arg, 1);
        }
      });
      rest = args.slice(index);
      if (rest.length === 0) return out;
      out += " ";
    }
    return out + rest.map((arg) => formatValue(arg)).join(" ");
  }

  const counters = new Map();
  const timersByLabel = new Map();
  const consoleObject = {
    log: (...args) => native.log("info", formatArgs(args)),
    info: (...args) => native.log("info", formatArgs(args)),
    debug: (...args) => native.log("debug", formatArgs(args)),
    trace: (...args) => native.log("debug", formatArgs(args) + "\n" + new Error().stack),
    warn: (...args) => native.log("warn", formatArgs(args)),
    error: (...args) => native.log("error", formatArgs(args)),
    assert: (condition, ...args) => {
      if (!condition) native.log("error", "Assertion failed" + (args.length ? ": " + formatArgs(args) : ""));
    },
    count: (label = "default") => {
      const count = (counters.get(label) ?? 0) + 1;
      counters.set(label, count);
      native.log("info", `${label}: ${count}`);
    },
    countReset: (label = "default") => counters.delete(label),
    time: (label = "default") => timersByLabel.set(label, Date.now()),
    timeLog: (label = "default", ...args) => {
      const started = timersByLabel.get(label);
      if (started !== undefined) native.log("info", `${label}: ${Date.now() - started}ms ${formatArgs(args)}`.trimEnd());
    },
    timeEnd: (label = "default") => {
      const started = timersByLabel.get(label);
      timersByLabel.delete(label);
      if (started !== undefined) native.log("info", `${label}: ${Date.now() - started}ms`);
    },
    table: (data) => native.log("info", formatValue(data)),
    dir: (value) => native.log("info", formatValue(value, 1)),
    group: () => {},
    groupEnd: () => {},
  };
  define("console", consoleObject);

  // ---------------------------------------------------------------------------------------
  // Timers and microtasks

  const timers = new Map();
  let nextTimerId = 1;

  function startTimer(callback, ms, args, repeat) {
    if (typeof callback !== "function") {
      throw new TypeError("the timer callback must be a function");
    }
    const id = nextTimerId++;
    const delay = Math.max(0, Number(ms) || 0);
    timers.set(id, { callback, args, repeat, delay });
    native.timerStart(id, delay);
    return id;
  }

  define("setTimeout", (callback, ms, ...args) => startTimer(callback, ms, args, false));
  define("setInterval", (callback, ms, ...args) => startTimer(callback, ms, args, true));
  function clearTimer(id) {
    if (timers.delete(Number(id))) native.timerClear(Number(id));
  }
  define("clearTimeout", clearTimer);
  define("clearInterval", clearTimer);
  define("queueMicrotask", (callback) => {
    if (typeof callback !== "function") throw new TypeError("queueMicrotask requires a function");
    Promise.resolve().then(() => callback());
  });

  function fireTimer(id) {
    const timer = timers.get(id);
    if (!timer) return;
    if (timer.repeat) native.timerStart(id, timer.delay);
    else timers.delete(id);
    timer.callback(...timer.args);
  }

  const timeOrigin = Date.now();
  define("performance", {
    timeOrigin,
    now: () => Date.now() - timeOrigin,
  });
  define("navigator", { userAgent: "Cloudflare-Workers", hardwareConcurrency: 1, language: "en" });

  // ---------------------------------------------------------------------------------------
  // Encoding: TextEncoder, TextDecoder, atob, btoa

  function toBytes(value) {
    if (value instanceof Uint8Array) return value;
    if (value instanceof ArrayBuffer) return new Uint8Array(value);
    if (ArrayBuffer.isView(value)) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
    if (typeof SharedArrayBuffer !== "undefined" && value instanceof SharedArrayBuffer) return new Uint8Array(value);
    throw new TypeError("expected an ArrayBuffer or ArrayBufferView");
  }

  class TextEncoder {
    get encoding() {
      return "utf-8";
    }
    encode(input = "") {
      return native.utf8Encode(String(input));
    }
    encodeInto(source, destination) {
      const bytes = native.utf8Encode(String(source));
      let read = 0;
      let written = 0;
      // Copy whole code points only, as the standard requires.
      for (const char of String(source)) {
        const length = native.utf8Encode(char).length;
        if (written + length > destination.length) break;
        destination.set(bytes.subarray(written, written + length), written);
        written += length;
        read += char.length;
      }
      return { read, written };
    }
  }
  define("TextEncoder", TextEncoder);

  const UTF8_LABELS = new Set(["utf-8", "utf8", "unicode-1-1-utf-8", "unicode11utf8", "unicode20utf8", "x-unicode20utf8"]);

  // Number of bytes at the end of `bytes` that start an incomplete UTF-8 sequence.
  function incompleteTail(bytes) {
    const length = bytes.length;
    for (let back = 1; back <= Math.min(3, length); back++) {
      const byte = bytes[length - back];
      if ((byte & 0xc0) === 0x80) continue;
      let needed = 1;
      if (byte >= 0xf0) needed = 4;
      else if (byte >= 0xe0) needed = 3;
      else if (byte >= 0xc0) needed = 2;
      return needed > back ? back : 0;
    }
    return 0;
  }

  class TextDecoder {
    #fatal;
    #ignoreBOM;
    #pending = new Uint8Array(0);
    #started = false;
    constructor(label = "utf-8", options = {}) {
      const normalized = String(label).trim().toLowerCase();
      if (!UTF8_LABELS.has(normalized)) {
        throw new RangeError(`TextDecoder: the encoding ${JSON.stringify(String(label))} is not supported (only utf-8 is)`);
      }
      this.#fatal = Boolean(options.fatal);
      this.#ignoreBOM = Boolean(options.ignoreBOM);
    }
    get encoding() {
      return "utf-8";
    }
    get fatal() {
      return this.#fatal;
    }
    get ignoreBOM() {
      return this.#ignoreBOM;
    }
    decode(input, options = {}) {
      let bytes = input === undefined ? new Uint8Array(0) : toBytes(input);
      if (this.#pending.length > 0) {
        const joined = new Uint8Array(this.#pending.length + bytes.length);
        joined.set(this.#pending);
        joined.set(bytes, this.#pending.length);
        bytes = joined;
        this.#pending = new Uint8Array(0);
      }
      const stream = Boolean(options.stream);
      if (stream) {
        const tail = incompleteTail(bytes);
        if (tail > 0) {
          this.#pending = bytes.slice(bytes.length - tail);
          bytes = bytes.subarray(0, bytes.length - tail);
        }
      }
      if (!this.#started && !this.#ignoreBOM && bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf) {
        bytes = bytes.subarray(3);
      }
      if (bytes.length > 0) this.#started = true;
      const text = native.utf8Decode(bytes, this.#fatal);
      if (!stream) this.#started = false;
      return text;
    }
  }
  define("TextDecoder", TextDecoder);

  const BASE64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  const BASE64_INDEX = new Map([...BASE64].map((char, index) => [char, index]));

  define("btoa", function btoa(data) {
    if (arguments.length === 0) throw new TypeError("btoa requires 1 argument");
    const text = String(data);
    let out = "";
    for (let i = 0; i < text.length; i += 3) {
      const codes = [text.charCodeAt(i), text.charCodeAt(i + 1), text.charCodeAt(i + 2)];
      for (const code of codes) {
        if (code > 255) throw new DOMException("btoa: the string contains characters outside Latin-1", "InvalidCharacterError");
      }
      const [a, b, c] = codes;
      out += BASE64[a >> 2];
      out += BASE64[((a & 3) << 4) | (isNaN(b) ? 0 : b >> 4)];
      out += isNaN(b) ? "=" : BASE64[((b & 15) << 2) | (isNaN(c) ? 0 : c >> 6)];
      out += isNaN(c) ? "=" : BASE64[c & 63];
    }
    return out;
  });

  define("atob", function atob(data) {
    if (arguments.length === 0) throw new TypeError("atob requires 1 argument");
    let text = String(data).replace(/[\t\n\f\r ]/g, "");
    if (text.length % 4 === 0) text = text.replace(/==?$/, "");
    if (text.length % 4 === 1 || /[^A-Za-z0-9+/]/.test(text)) {
      throw new DOMException("atob: the string is not correctly encoded", "InvalidCharacterError");
    }
    let out = "";
    let buffer = 0;
    let bits = 0;
    for (const char of text) {
      buffer = (buffer << 6) | BASE64_INDEX.get(char);
      bits += 6;
      if (bits >= 8) {
        bits -= 8;
        out += String.fromCharCode((buffer >> bits) & 0xff);
      }
    }
    return out;
  });

  // ---------------------------------------------------------------------------------------
  // crypto

  const cryptoObject = {
    getRandomValues(array) {
      if (!ArrayBuffer.isView(array) || array instanceof Float32Array || array instanceof Float64Array || array instanceof DataView) {
        throw new DOMException("getRandomValues requires an integer typed array", "TypeMismatchError");
      }
      if (array.byteLength > 65536) {
        throw new DOMException(`getRandomValues: ${array.byteLength} bytes requested, the maximum is 65536`, "QuotaExceededError");
      }
      toBytes(array).set(native.randomBytes(array.byteLength));
      return array;
    },
    randomUUID() {
      return native.randomUUID();
    },
    subtle: {
      async digest(algorithm, data) {
        const name = String(typeof algorithm === "object" ? algorithm.name : algorithm).toUpperCase();
        const bytes = native.digest(name, toBytes(data).slice());
        return bytes.buffer;
      },
    },
  };
  define("crypto", cryptoObject);

  // ---------------------------------------------------------------------------------------
  // structuredClone

  function cloneValue(value, memory) {
    if (typeof value === "function" || typeof value === "symbol") {
      throw new DOMException(`${String(value)} could not be cloned`, "DataCloneError");
    }
    if (value === null || typeof value !== "object") return value;
    if (memory.has(value)) return memory.get(value);
    let copy;
    if (value instanceof Date) copy = new Date(value.getTime());
    else if (value instanceof RegExp) copy = new RegExp(value.source, value.flags);
    else if (value instanceof ArrayBuffer) copy = value.slice(0);
    else if (value instanceof DataView) copy = new DataView(cloneValue(value.buffer, memory), value.byteOffset, value.byteLength);
    else if (ArrayBuffer.isView(value)) copy = new value.constructor(cloneValue(value.buffer, memory), value.byteOffset, value.length);
    else if (value instanceof Map) {
      copy = new Map();
      memory.set(value, copy);
      for (const [k, v] of value) copy.set(cloneValue(k, memory), cloneValue(v, memory));
      return copy;
    } else if (value instanceof Set) {
      copy = new Set();
      memory.set(value, copy);
      for (const v of value) copy.add(cloneValue(v, memory));
      return copy;
    } else if (value instanceof Error) {
      const Constructor = { EvalError, RangeError, ReferenceError, SyntaxError, TypeError, URIError }[value.name] ?? Error;
      copy = new Constructor(value.message);
      if (value.stack) copy.stack = value.stack;
    } else if (value instanceof Blob) {
      copy = value;
    } else if (Array.isArray(value)) {
      copy = new Array(value.length);
      memory.set(value, copy);
      for (const key of Object.keys(value)) copy[key] = cloneValue(value[key], memory);
      return copy;
    } else if (value instanceof Promise || value instanceof WeakMap || value instanceof WeakSet) {
      throw new DOMException(`${Object.prototype.toString.call(value)} could not be cloned`, "DataCloneError");
    } else {
      copy = {};
      memory.set(value, copy);
      for (const key of Object.keys(value)) copy[key] = cloneValue(value[key], memory);
      return copy;
    }
    memory.set(value, copy);
    return copy;
  }
  define("structuredClone", (value) => cloneValue(value, new Map()));

  // ---------------------------------------------------------------------------------------
  // AbortController, AbortSignal

  class AbortSignal extends EventTarget {
    #aborted = false;
    #reason = undefined;
    constructor(key) {
      super();
      if (key !== ABORT_KEY) throw new TypeError("Illegal constructor");
      this.onabort = null;
    }
    get aborted() {
      return this.#aborted;
    }
    get reason() {
      return this.#reason;
    }
    throwIfAborted() {
      if (this.#aborted) throw this.#reason;
    }
    _abort(reason) {
      if (this.#aborted) return;
      this.#aborted = true;
      this.#reason = reason === undefined ? new DOMException("This operation was aborted", "AbortError") : reason;
      this.dispatchEvent(new Event("abort"));
    }
    static abort(reason) {
      const signal = new AbortSignal(ABORT_KEY);
      signal._abort(reason);
      return signal;
    }
    static timeout(ms) {
      const signal = new AbortSignal(ABORT_KEY);
      setTimeout(() => signal._abort(new DOMException("The operation timed out", "TimeoutError")), ms);
      return signal;
    }
    static any(signals) {
      const signal = new AbortSignal(ABORT_KEY);
      for (const source of signals) {
        if (source.aborted) {
          signal._abort(source.reason);
          return signal;
        }
        source.addEventListener("abort", () => signal._abort(source.reason), { once: true });
      }
      return signal;
    }
  }
  const ABORT_KEY = Symbol("AbortSignal");
  define("AbortSignal", AbortSignal);

  class AbortController {
    #signal = new AbortSignal(ABORT_KEY);
    get signal() {
      return this.#signal;
    }
    abort(reason) {
      this.#signal._abort(reason);
    }
  }
  define("AbortController", AbortController);

  // ---------------------------------------------------------------------------------------
  // Streams: ReadableStream, WritableStream, TransformStream

  class ReadableStreamDefaultController {
    constructor(stream) {
      this._stream = stream;
    }
    get desiredSize() {
      const stream = this._stream;
      if (stream._state === "errored") return null;
      if (stream._state === "closed") return 0;
      return stream._highWaterMark - stream._queue.length;
    }
    enqueue(chunk) {
      const stream = this._stream;
      if (stream._closeRequested || stream._state !== "readable") {
        throw new TypeError("ReadableStream: cannot enqueue into a closed or errored stream");
      }
      if (stream._readRequests.length > 0) {
        stream._readRequests.shift().resolve({ value: chunk, done: false });
      } else {
        stream._queue.push(chunk);
      }
      stream._pullIfNeeded();
    }
    close() {
      const stream = this._stream;
      if (stream._closeRequested || stream._state !== "readable") {
        throw new TypeError("ReadableStream: the stream is already closed or errored");
      }
      stream._closeRequested = true;
      if (stream._queue.length === 0) stream._finishClose();
    }
    error(reason) {
      this._stream._error(reason);
    }
  }

  class ReadableStreamDefaultReader {
    constructor(stream) {
      if (!(stream instanceof ReadableStream)) throw new TypeError("ReadableStreamDefaultReader requires a ReadableStream");
      if (stream._reader) throw new TypeError("ReadableStream is locked to a reader");
      this._stream = stream;
      stream._reader = this;
      this._closed = new Promise((resolve, reject) => {
        this._resolveClosed = resolve;
        this._rejectClosed = reject;
      });
      this._closed.catch(() => {});
      if (stream._state === "closed") this._resolveClosed();
      if (stream._state === "errored") this._rejectClosed(stream._storedError);
    }
    get closed() {
      return this._closed;
    }
    read() {
      const stream = this._stream;
      if (!stream) return Promise.reject(new TypeError("the reader was released"));
      if (stream._queue.length > 0) {
        const value = stream._queue.shift();
        if (stream._closeRequested && stream._queue.length === 0) stream._finishClose();
        else stream._pullIfNeeded();
        return Promise.resolve({ value, done: false });
      }
      if (stream._state === "closed") return Promise.resolve({ value: undefined, done: true });
      if (stream._state === "errored") return Promise.reject(stream._storedError);
      return new Promise((resolve, reject) => {
        stream._readRequests.push({ resolve, reject });
        stream._pullIfNeeded();
      });
    }
    releaseLock() {
      const stream = this._stream;
      if (!stream) return;
      for (const request of stream._readRequests.splice(0)) {
        request.reject(new TypeError("the reader was released"));
      }
      stream._reader = null;
      this._stream = null;
    }
    cancel(reason) {
      if (!this._stream) return Promise.reject(new TypeError("the reader was released"));
      return this._stream._cancel(reason);
    }
  }

  class ReadableStream {
    constructor(source = {}, strategy = {}) {
      this._state = "readable";
      this._queue = [];
      this._readRequests = [];
      this._reader = null;
      this._closeRequested = false;
      this._pulling = false;
      this._pullAgain = false;
      this._started = false;
      this._storedError = undefined;
      this._source = source ?? {};
      this._highWaterMark = strategy.highWaterMark ?? (source?.type === "bytes" ? 0 : 1);
      this._controller = new ReadableStreamDefaultController(this);
      const start = this._source.start ? this._source.start(this._controller) : undefined;
      Promise.resolve(start).then(
        () => {
          this._started = true;
          this._pullIfNeeded();
        },
        (error) => this._error(error),
      );
    }
    get locked() {
      return this._reader != null;
    }
    _pullIfNeeded() {
      if (!this._started || this._state !== "readable" || this._closeRequested) return;
      if (!this._source.pull) return;
      const hasDemand = this._readRequests.length > 0 || this._queue.length < this._highWaterMark;
      if (!hasDemand) return;
      if (this._pulling) {
        this._pullAgain = true;
        return;
      }
      this._pulling = true;
      Promise.resolve()
        .then(() => this._source.pull(this._controller))
        .then(
          () => {
            this._pulling = false;
            if (this._pullAgain) {
              this._pullAgain = false;
              this._pullIfNeeded();
            }
          },
          (error) => this._error(error),
        );
    }
    _finishClose() {
      if (this._state !== "readable") return;
      this._state = "closed";
      for (const request of this._readRequests.splice(0)) request.resolve({ value: undefined, done: true });
      if (this._reader) this._reader._resolveClosed();
    }
    _error(reason) {
      if (this._state !== "readable") return;
      this._state = "errored";
      this._storedError = reason;
      this._queue = [];
      for (const request of this._readRequests.splice(0)) request.reject(reason);
      if (this._reader) this._reader._rejectClosed(reason);
    }
    _cancel(reason) {
      if (this._state === "closed") return Promise.resolve();
      if (this._state === "errored") return Promise.reject(this._storedError);
      this._queue = [];
      this._finishClose();
      return Promise.resolve(this._source.cancel ? this._source.cancel(reason) : undefined).then(() => undefined);
    }
    cancel(reason) {
      if (this.locked) return Promise.reject(new TypeError("ReadableStream is locked to a reader"));
      return this._cancel(reason);
    }
    getReader(options = {}) {
      if (options.mode === "byob") throw new TypeError("BYOB readers are not supported");
      return new ReadableStreamDefaultReader(this);
    }
    tee() {
      const reader = this.getReader();
      let cancelled = 0;
      const branches = [];
      let reading = false;
      const pull = () => {
        if (reading) return Promise.resolve();
        reading = true;
        return reader.read().then(({ value, done }) => {
          reading = false;
          for (const branch of branches) {
            if (branch._state !== "readable" || branch._closeRequested) continue;
            if (done) branch._controller.close();
            else branch._controller.enqueue(value);
          }
        }, (error) => {
          for (const branch of branches) branch._error(error);
        });
      };
      const cancel = () => {
        cancelled += 1;
        if (cancelled === 2) return reader.cancel();
      };
      branches.push(new ReadableStream({ pull, cancel }), new ReadableStream({ pull, cancel }));
      return branches;
    }
    async pipeTo(destination, options = {}) {
      const reader = this.getReader();
      const writer = destination.getWriter();
      const signal = options.signal;
      try {
        for (;;) {
          if (signal?.aborted) throw signal.reason;
          const { value, done } = await reader.read();
          if (done) break;
          await writer.write(value);
        }
        if (!options.preventClose) await writer.close();
      } catch (error) {
        if (!options.preventAbort) await writer.abort(error).catch(() => {});
        if (!options.preventCancel) await reader.cancel(error).catch(() => {});
        throw error;
      } finally {
        reader.releaseLock();
        writer.releaseLock();
      }
    }
    pipeThrough(transform, options = {}) {
      const promise = this.pipeTo(transform.writable, options);
      promise.catch(() => {});
      return transform.readable;
    }
    values(options = {}) {
      const reader = this.getReader();
      const preventCancel = Boolean(options.preventCancel);
      return {
        next: () => reader.read().then((result) => {
          if (result.done) reader.releaseLock();
          return result;
        }),
        return: async (value) => {
          if (!preventCancel) await reader.cancel(value);
          reader.releaseLock();
          return { value, done: true };
        },
        [Symbol.asyncIterator]() {
          return this;
        },
      };
    }
    [Symbol.asyncIterator](options) {
      return this.values(options);
    }
    static from(iterable) {
      const iterator = iterable[Symbol.asyncIterator] ? iterable[Symbol.asyncIterator]() : iterable[Symbol.iterator]();
      return new ReadableStream({
        async pull(controller) {
          const { value, done } = await iterator.next();
          if (done) controller.close();
          else controller.enqueue(value);
        },
        async cancel(reason) {
          if (iterator.return) await iterator.return(reason);
        },
      });
    }
  }
  define("ReadableStream", ReadableStream);
  define("ReadableStreamDefaultReader", ReadableStreamDefaultReader);
  define("ReadableStreamDefaultController", ReadableStreamDefaultController);

  class WritableStreamDefaultWriter {
    constructor(stream) {
      if (stream._writer) throw new TypeError("WritableStream is locked to a writer");
      this._stream = stream;
      stream._writer = this;
    }
    get closed() {
      return this._stream._closedPromise;
    }
    get ready() {
      return Promise.resolve();
    }
    get desiredSize() {
      return 1;
    }
    write(chunk) {
      return this._stream._enqueue(() => this._stream._sink.write?.(chunk, this._stream._controller));
    }
    close() {
      return this._stream._close();
    }
    abort(reason) {
      return this._stream._abort(reason);
    }
    releaseLock() {
      if (this._stream) this._stream._writer = null;
      this._stream = null;
    }
  }

  class WritableStream {
    constructor(sink = {}) {
      this._sink = sink;
      this._writer = null;
      this._state = "writable";
      this._chain = Promise.resolve();
      this._controller = {
        error: (reason) => this._fail(reason),
        signal: new AbortController().signal,
      };
      this._closedPromise = new Promise((resolve, reject) => {
        this._resolveClosed = resolve;
        this._rejectClosed = reject;
      });
      this._closedPromise.catch(() => {});
      this._enqueue(() => sink.start?.(this._controller));
    }
    get locked() {
      return this._writer != null;
    }
    _fail(reason) {
      if (this._state === "errored") return;
      this._state = "errored";
      this._storedError = reason;
      this._rejectClosed(reason);
    }
    _enqueue(operation) {
      if (this._state === "errored") return Promise.reject(this._storedError);
      if (this._state !== "writable") return Promise.reject(new TypeError("the WritableStream is closed"));
      const result = this._chain.then(() => {
        if (this._state === "errored") throw this._storedError;
        return operation();
      });
      this._chain = result.catch((error) => this._fail(error));
      return result.then(() => undefined);
    }
    _close() {
      const result = this._enqueue(() => this._sink.close?.());
      this._state = "closing";
      return result.then(() => {
        this._state = "closed";
        this._resolveClosed();
      });
    }
    _abort(reason) {
      if (this._state === "closed" || this._state === "errored") return Promise.resolve();
      this._fail(reason);
      return Promise.resolve(this._sink.abort?.(reason)).then(() => undefined);
    }
    getWriter() {
      return new WritableStreamDefaultWriter(this);
    }
    close() {
      if (this.locked) return Promise.reject(new TypeError("WritableStream is locked to a writer"));
      return this._close();
    }
    abort(reason) {
      if (this.locked) return Promise.reject(new TypeError("WritableStream is locked to a writer"));
      return this._abort(reason);
    }
  }
  define("WritableStream", WritableStream);
  define("WritableStreamDefaultWriter", WritableStreamDefaultWriter);

  class TransformStream {
    constructor(transformer = {}) {
      let readableController;
      this.readable = new ReadableStream({
        start: (controller) => {
          readableController = controller;
        },
        cancel: (reason) => transformer.cancel?.(reason),
      });
      const controller = {
        enqueue: (chunk) => readableController.enqueue(chunk),
        error: (reason) => readableController.error(reason),
        terminate: () => readableController.close(),
        get desiredSize() {
          return readableController.desiredSize;
        },
      };
      const started = Promise.resolve().then(() => transformer.start?.(controller));
      this.writable = new WritableStream({
        write: async (chunk) => {
          await started;
          if (transformer.transform) await transformer.transform(chunk, controller);
          else controller.enqueue(chunk);
        },
        close: async () => {
          await started;
          if (transformer.flush) await transformer.flush(controller);
          if (this.readable._state === "readable" && !this.readable._closeRequested) readableController.close();
        },
        abort: (reason) => readableController.error(reason),
      });
    }
  }
  define("TransformStream", TransformStream);

  class TextDecoderStream extends TransformStream {
    constructor(label = "utf-8", options = {}) {
      const decoder = new TextDecoder(label, options);
      super({
        transform(chunk, controller) {
          const text = decoder.decode(chunk, { stream: true });
          if (text) controller.enqueue(text);
        },
        flush(controller) {
          const text = decoder.decode();
          if (text) controller.enqueue(text);
        },
      });
    }
  }
  define("TextDecoderStream", TextDecoderStream);

  class TextEncoderStream extends TransformStream {
    constructor() {
      const encoder = new TextEncoder();
      super({
        transform(chunk, controller) {
          controller.enqueue(encoder.encode(String(chunk)));
        },
      });
    }
  }
  define("TextEncoderStream", TextEncoderStream);

  // ---------------------------------------------------------------------------------------
  // Blob, File

  class Blob {
    #bytes;
    #type;
    constructor(parts = [], options = {}) {
      const chunks = [];
      for (const part of parts) {
        if (part instanceof Blob) chunks.push(part._bytes());
        else if (part instanceof ArrayBuffer || ArrayBuffer.isView(part)) chunks.push(toBytes(part).slice());
        else chunks.push(native.utf8Encode(String(part)));
      }
      this.#bytes = concatBytes(chunks);
      const type = options.type === undefined ? "" : String(options.type);
      this.#type = /^[\x20-\x7e]*$/.test(type) ? type.toLowerCase() : "";
    }
    _bytes() {
      return this.#bytes;
    }
    get size() {
      return this.#bytes.length;
    }
    get type() {
      return this.#type;
    }
    async text() {
      return native.utf8Decode(this.#bytes, false);
    }
    async arrayBuffer() {
      return this.#bytes.slice().buffer;
    }
    async bytes() {
      return this.#bytes.slice();
    }
    slice(start = 0, end = this.size, type = "") {
      return new Blob([this.#bytes.slice(start, end)], { type });
    }
    stream() {
      const bytes = this.#bytes;
      return new ReadableStream({
        start(controller) {
          if (bytes.length > 0) controller.enqueue(bytes.slice());
          controller.close();
        },
      });
    }
    get [Symbol.toStringTag]() {
      return "Blob";
    }
  }
  define("Blob", Blob);

  class File extends Blob {
    #name;
    #lastModified;
    constructor(parts, name, options = {}) {
      if (arguments.length < 2) throw new TypeError("File requires parts and a name");
      super(parts, options);
      this.#name = String(name);
      this.#lastModified = options.lastModified === undefined ? Date.now() : Number(options.lastModified);
    }
    get name() {
      return this.#name;
    }
    get lastModified() {
      return this.#lastModified;
    }
    get [Symbol.toStringTag]() {
      return "File";
    }
  }
  define("File", File);

  function concatBytes(chunks) {
    let length = 0;
    for (const chunk of chunks) length += chunk.length;
    const out = new Uint8Array(length);
    let offset = 0;
    for (const chunk of chunks) {
      out.set(chunk, offset);
      offset += chunk.length;
    }
    return out;
  }

  // ---------------------------------------------------------------------------------------
  // URLSearchParams, URL

  function formEncode(text) {
    const bytes = native.utf8Encode(text);
    let out = "";
    for (const byte of bytes) {
      if ((byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5a) || (byte >= 0x61 && byte <= 0x7a) || byte === 0x2a || byte === 0x2d || byte === 0x2e || byte === 0x5f) {
        out += String.fromCharCode(byte);
      } else if (byte === 0x20) {
        out += "+";
      } else {
        out += "%" + byte.toString(16).toUpperCase().padStart(2, "0");
      }
    }
    return out;
  }

  function percentDecode(text) {
    const bytes = [];
    const encoded = native.utf8Encode(text);
    for (let i = 0; i < encoded.length; i++) {
      const byte = encoded[i];
      if (byte === 0x25 && i + 2 < encoded.length) {
        const hex = String.fromCharCode(encoded[i + 1], encoded[i + 2]);
        if (/^[0-9A-Fa-f]{2}$/.test(hex)) {
          bytes.push(parseInt(hex, 16));
          i += 2;
          continue;
        }
      }
      bytes.push(byte);
    }
    return native.utf8Decode(new Uint8Array(bytes), false);
  }

  function parseFormEncoded(text) {
    const list = [];
    for (const piece of text.split("&")) {
      if (piece === "") continue;
      const index = piece.indexOf("=");
      const name = index === -1 ? piece : piece.slice(0, index);
      const value = index === -1 ? "" : piece.slice(index + 1);
      list.push([percentDecode(name.replace(/\+/g, " ")), percentDecode(value.replace(/\+/g, " "))]);
    }
    return list;
  }

  class URLSearchParams {
    #list = [];
    #url = null;
    constructor(init = "") {
      if (init instanceof URLSearchParams) {
        this.#list = init.#list.map(([k, v]) => [k, v]);
      } else if (typeof init === "object" && init !== null) {
        if (typeof init[Symbol.iterator] === "function") {
          for (const pair of init) {
            const entry = [...pair];
            if (entry.length !== 2) throw new TypeError("URLSearchParams: each pair must have exactly two items");
            this.#list.push([String(entry[0]), String(entry[1])]);
          }
        } else {
          for (const key of Object.keys(init)) this.#list.push([key, String(init[key])]);
        }
      } else {
        let text = String(init);
        if (text.startsWith("?")) text = text.slice(1);
        this.#list = parseFormEncoded(text);
      }
    }
    static _forUrl(url, query) {
      const params = new URLSearchParams(query);
      params.#url = url;
      return params;
    }
    _reset(query) {
      this.#list = parseFormEncoded(query.startsWith("?") ? query.slice(1) : query);
    }
    #update() {
      if (this.#url) this.#url._setQueryFromParams(this.toString());
    }
    get size() {
      return this.#list.length;
    }
    append(name, value) {
      this.#list.push([String(name), String(value)]);
      this.#update();
    }
    delete(name, value) {
      name = String(name);
      this.#list = this.#list.filter(([k, v]) => !(k === name && (value === undefined || v === String(value))));
      this.#update();
    }
    get(name) {
      const entry = this.#list.find(([k]) => k === String(name));
      return entry ? entry[1] : null;
    }
    getAll(name) {
      return this.#list.filter(([k]) => k === String(name)).map(([, v]) => v);
    }
    has(name, value) {
      name = String(name);
      return this.#list.some(([k, v]) => k === name && (value === undefined || v === String(value)));
    }
    set(name, value) {
      name = String(name);
      value = String(value);
      const index = this.#list.findIndex(([k]) => k === name);
      if (index === -1) this.#list.push([name, value]);
      else {
        this.#list[index][1] = value;
        this.#list = this.#list.filter(([k], i) => k !== name || i === index);
      }
      this.#update();
    }
    sort() {
      const indexed = this.#list.map((entry, index) => [entry, index]);
      indexed.sort((a, b) => {
        const x = a[0][0];
        const y = b[0][0];
        // Code units, as the standard specifies.
        if (x < y) return -1;
        if (x > y) return 1;
        return a[1] - b[1];
      });
      this.#list = indexed.map(([entry]) => entry);
      this.#update();
    }
    forEach(callback, thisArg) {
      for (const [k, v] of this.#list) callback.call(thisArg, v, k, this);
    }
    *entries() {
      for (const [k, v] of this.#list) yield [k, v];
    }
    *keys() {
      for (const [k] of this.#list) yield k;
    }
    *values() {
      for (const [, v] of this.#list) yield v;
    }
    [Symbol.iterator]() {
      return this.entries();
    }
    toString() {
      return this.#list.map(([k, v]) => formEncode(k) + "=" + formEncode(v)).join("&");
    }
  }
  define("URLSearchParams", URLSearchParams);

  class URL {
    #parts;
    #searchParams;
    constructor(url, base) {
      if (arguments.length === 0) throw new TypeError("URL requires 1 argument");
      const parts = native.parseUrl(String(url), base === undefined ? undefined : String(base));
      if (parts == null) {
        throw new TypeError(`Invalid URL: ${String(url)}${base === undefined ? "" : " (base " + String(base) + ")"}`);
      }
      this.#parts = JSON.parse(parts);
      this.#searchParams = URLSearchParams._forUrl(this, this.#parts.search);
    }
    static canParse(url, base) {
      return native.parseUrl(String(url), base === undefined ? undefined : String(base)) != null;
    }
    static parse(url, base) {
      try {
        return new URL(url, base);
      } catch {
        return null;
      }
    }
    #set(part, value) {
      const parts = native.setUrlPart(this.#parts.href, part, String(value));
      if (parts != null) {
        this.#parts = JSON.parse(parts);
        if (part === "search" || part === "href") this.#searchParams._reset(this.#parts.search);
      }
    }
    _setQueryFromParams(query) {
      const parts = native.setUrlPart(this.#parts.href, "search", query);
      if (parts != null) this.#parts = JSON.parse(parts);
    }
    get href() {
      return this.#parts.href;
    }
    set href(value) {
      const parts = native.parseUrl(String(value), undefined);
      if (parts == null) throw new TypeError(`Invalid URL: ${String(value)}`);
      this.#parts = JSON.parse(parts);
      this.#searchParams._reset(this.#parts.search);
    }
    get origin() {
      return this.#parts.origin;
    }
    get protocol() {
      return this.#parts.protocol;
    }
    set protocol(value) {
      this.#set("protocol", value);
    }
    get username() {
      return this.#parts.username;
    }
    set username(value) {
      this.#set("username", value);
    }
    get password() {
      return this.#parts.password;
    }
    set password(value) {
      this.#set("password", value);
    }
    get host() {
      return this.#parts.host;
    }
    set host(value) {
      this.#set("host", value);
    }
    get hostname() {
      return this.#parts.hostname;
    }
    set hostname(value) {
      this.#set("hostname", value);
    }
    get port() {
      return this.#parts.port;
    }
    set port(value) {
      this.#set("port", value);
    }
    get pathname() {
      return this.#parts.pathname;
    }
    set pathname(value) {
      this.#set("pathname", value);
    }
    get search() {
      return this.#parts.search;
    }
    set search(value) {
      this.#set("search", value);
    }
    get searchParams() {
      return this.#searchParams;
    }
    get hash() {
      return this.#parts.hash;
    }
    set hash(value) {
      this.#set("hash", value);
    }
    toString() {
      return this.href;
    }
    toJSON() {
      return this.href;
    }
  }
  define("URL", URL);

  // Returns `new URL(url).href` without building the URL and its URLSearchParams.
  function serializeUrl(url) {
    const parts = native.parseUrl(url, undefined);
    if (parts == null) throw new TypeError(`Invalid URL: ${url}`);
    return JSON.parse(parts).href;
  }

  // ---------------------------------------------------------------------------------------
  // Headers

  const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
  const INVALID_VALUE = /[\0\r\n]/;

  function isHttpWhitespace(code) {
    return code === 0x20 || code === 0x09 || code === 0x0a || code === 0x0d;
  }

  // Strips leading and trailing HTTP whitespace. A loop, because the equivalent regular
  // expression cost several microseconds per header on QuickJS.
  function normalizeValue(value) {
    const text = String(value);
    let start = 0;
    let end = text.length;
    while (start < end && isHttpWhitespace(text.charCodeAt(start))) start++;
    while (end > start && isHttpWhitespace(text.charCodeAt(end - 1))) end--;
    return start === 0 && end === text.length ? text : text.slice(start, end);
  }

  class Headers {
    #map = new Map();
    #cookies = [];
    #guard = "none";
    constructor(init) {
      if (init === undefined || init === null) return;
      if (init instanceof Headers) {
        for (const [k, v] of init.#map) this.#map.set(k, v);
        this.#cookies = [...init.#cookies];
      } else if (typeof init[Symbol.iterator] === "function") {
        for (const pair of init) {
          const entry = [...pair];
          if (entry.length !== 2) throw new TypeError("Headers: each header must be a [name, value] pair");
          this.append(entry[0], entry[1]);
        }
      } else if (typeof init === "object") {
        for (const key of Object.keys(init)) this.append(key, init[key]);
      } else {
        throw new TypeError("Headers: init must be an object, an iterable of pairs or Headers");
      }
    }
    _setGuard(guard) {
      this.#guard = guard;
      return this;
    }
    #check(name) {
      name = String(name);
      if (!TOKEN.test(name)) throw new TypeError(`Invalid header name: ${JSON.stringify(name)}`);
      if (this.#guard === "immutable") throw new TypeError("Headers are immutable");
      return name.toLowerCase();
    }
    append(name, value) {
      const key = this.#check(name);
      value = normalizeValue(value);
      if (INVALID_VALUE.test(value)) throw new TypeError(`Invalid header value for ${key}`);
      if (key === "set-cookie") this.#cookies.push(value);
      const existing = this.#map.get(key);
      this.#map.set(key, existing === undefined ? value : existing + ", " + value);
    }
    set(name, value) {
      const key = this.#check(name);
      value = normalizeValue(value);
      if (INVALID_VALUE.test(value)) throw new TypeError(`Invalid header value for ${key}`);
      if (key === "set-cookie") this.#cookies = [value];
      this.#map.set(key, value);
    }
    delete(name) {
      const key = this.#check(name);
      if (key === "set-cookie") this.#cookies = [];
      this.#map.delete(key);
    }
    get(name) {
      const key = String(name).toLowerCase();
      return this.#map.has(key) ? this.#map.get(key) : null;
    }
    getSetCookie() {
      return [...this.#cookies];
    }
    getAll(name) {
      const key = String(name).toLowerCase();
      if (key === "set-cookie") return [...this.#cookies];
      throw new TypeError("getAll() is only supported for Set-Cookie");
    }
    has(name) {
      return this.#map.has(String(name).toLowerCase());
    }
    forEach(callback, thisArg) {
      for (const [k, v] of this.entries()) callback.call(thisArg, v, k, this);
    }
    *entries() {
      const keys = [...this.#map.keys()].sort();
      for (const key of keys) {
        if (key === "set-cookie") {
          for (const cookie of this.#cookies) yield [key, cookie];
        } else {
          yield [key, this.#map.get(key)];
        }
      }
    }
    *keys() {
      for (const [k] of this.entries()) yield k;
    }
    *values() {
      for (const [, v] of this.entries()) yield v;
    }
    [Symbol.iterator]() {
      return this.entries();
    }
    _flat() {
      const flat = [];
      for (const [k, v] of this.entries()) flat.push(k, v);
      return flat;
    }
  }
  define("Headers", Headers);

  // ---------------------------------------------------------------------------------------
  // FormData and multipart/form-data

  function toFormEntry(value, filename) {
    if (value instanceof Blob) {
      if (value instanceof File && filename === undefined) return value;
      let name = "blob";
      if (filename !== undefined) name = String(filename);
      else if (value instanceof File) name = value.name;
      return new File([value], name, { type: value.type });
    }
    return String(value);
  }

  class FormData {
    #list = [];
    constructor(form) {
      if (form !== undefined) throw new TypeError("FormData: a form element is not supported");
    }
    append(name, value, filename) {
      this.#list.push([String(name), toFormEntry(value, filename)]);
    }
    set(name, value, filename) {
      name = String(name);
      const entry = toFormEntry(value, filename);
      const index = this.#list.findIndex(([k]) => k === name);
      if (index === -1) this.#list.push([name, entry]);
      else {
        this.#list[index] = [name, entry];
        this.#list = this.#list.filter(([k], i) => k !== name || i === index);
      }
    }
    delete(name) {
      this.#list = this.#list.filter(([k]) => k !== String(name));
    }
    get(name) {
      const entry = this.#list.find(([k]) => k === String(name));
      return entry ? entry[1] : null;
    }
    getAll(name) {
      return this.#list.filter(([k]) => k === String(name)).map(([, v]) => v);
    }
    has(name) {
      return this.#list.some(([k]) => k === String(name));
    }
    forEach(callback, thisArg) {
      for (const [k, v] of this.#list) callback.call(thisArg, v, k, this);
    }
    *entries() {
      for (const [k, v] of this.#list) yield [k, v];
    }
    *keys() {
      for (const [k] of this.#list) yield k;
    }
    *values() {
      for (const [, v] of this.#list) yield v;
    }
    [Symbol.iterator]() {
      return this.entries();
    }
  }
  define("FormData", FormData);

  function escapeMultipartName(name) {
    return name.replace(/\n/g, "%0A").replace(/\r/g, "%0D").replace(/"/g, "%22");
  }

  function serializeMultipart(form) {
    const boundary = "----KilnFormBoundary" + native.randomUUID().replace(/-/g, "");
    const chunks = [];
    for (const [name, value] of form) {
      let head = `--${boundary}\r\nContent-Disposition: form-data; name="${escapeMultipartName(name)}"`;
      if (value instanceof File) {
        head += `; filename="${escapeMultipartName(value.name)}"\r\nContent-Type: ${value.type || "application/octet-stream"}\r\n\r\n`;
        chunks.push(native.utf8Encode(head), value._bytes(), native.utf8Encode("\r\n"));
      } else {
        head += "\r\n\r\n";
        chunks.push(native.utf8Encode(head + value.replace(/\r?\n|\r/g, "\r\n") + "\r\n"));
      }
    }
    chunks.push(native.utf8Encode(`--${boundary}--\r\n`));
    return { bytes: concatBytes(chunks), contentType: `multipart/form-data; boundary=${boundary}` };
  }

  function indexOfBytes(haystack, needle, from) {
    const first = needle[0];
    const last = haystack.length - needle.length;
    outer: for (let i = from; i <= last; i++) {
      if (haystack[i] !== first) continue;
      for (let j = 1; j < needle.length; j++) {
        if (haystack[i + j] !== needle[j]) continue outer;
      }
      return i;
    }
    return -1;
  }

  function parameterOf(header, name) {
    const pattern = new RegExp(`(?:^|;)\\s*${name}\\s*=\\s*(?:"((?:[^"\\\\]|\\\\.)*)"|([^;\\s]*))`, "i");
    const match = pattern.exec(header);
    if (!match) return null;
    return match[1] !== undefined ? match[1].replace(/\\(.)/g, "$1") : match[2];
  }

  function parseMultipart(bytes, contentType) {
    const boundary = parameterOf(contentType, "boundary");
    if (!boundary) throw new TypeError("multipart/form-data body without a boundary parameter in its Content-Type");
    const delimiter = native.utf8Encode("--" + boundary);
    const form = new FormData();
    let position = indexOfBytes(bytes, delimiter, 0);
    if (position === -1) throw new TypeError("multipart/form-data body does not contain its boundary");
    for (;;) {
      position += delimiter.length;
      if (bytes[position] === 0x2d && bytes[position + 1] === 0x2d) break;
      if (bytes[position] === 0x0d && bytes[position + 1] === 0x0a) position += 2;
      const headerEnd = indexOfBytes(bytes, native.utf8Encode("\r\n\r\n"), position);
      if (headerEnd === -1) throw new TypeError("multipart/form-data part without a header end");
      const headerText = native.utf8Decode(bytes.subarray(position, headerEnd), false);
      const next = indexOfBytes(bytes, native.utf8Encode("\r\n--" + boundary), headerEnd + 4);
      if (next === -1) throw new TypeError("multipart/form-data body is truncated: the closing boundary is missing");
      const body = bytes.slice(headerEnd + 4, next);
      const headers = new Map();
      for (const line of headerText.split("\r\n")) {
        const colon = line.indexOf(":");
        if (colon > 0) headers.set(line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim());
      }
      const disposition = headers.get("content-disposition") ?? "";
      const name = parameterOf(disposition, "name");
      if (name === null) throw new TypeError("multipart/form-data part without a name in Content-Disposition");
      const filename = parameterOf(disposition, "filename");
      if (filename !== null) {
        form.append(name, new File([body], filename, { type: headers.get("content-type") ?? "application/octet-stream" }));
      } else {
        form.append(name, native.utf8Decode(body, false));
      }
      position = next + 2;
    }
    return form;
  }

  // ---------------------------------------------------------------------------------------
  // Body, Request, Response

  // Returns [bytes or stream or null, default content type or null].
  function extractBody(body) {
    if (body === undefined || body === null) return [null, null];
    if (typeof body === "string") return [native.utf8Encode(body), "text/plain;charset=UTF-8"];
    if (body instanceof ReadableStream) return [body, null];
    if (body instanceof Blob) return [body._bytes(), body.type || null];
    if (body instanceof ArrayBuffer || ArrayBuffer.isView(body)) return [toBytes(body).slice(), null];
    if (body instanceof URLSearchParams) return [native.utf8Encode(body.toString()), "application/x-www-form-urlencoded;charset=UTF-8"];
    if (body instanceof FormData) {
      const { bytes, contentType } = serializeMultipart(body);
      return [bytes, contentType];
    }
    return [native.utf8Encode(String(body)), "text/plain;charset=UTF-8"];
  }

  async function readAll(stream) {
    const reader = stream.getReader();
    const chunks = [];
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      chunks.push(typeof value === "string" ? native.utf8Encode(value) : toBytes(value));
    }
    return concatBytes(chunks);
  }

  class Body {
    constructor(body, headers) {
      const [content, contentType] = extractBody(body);
      this._content = content;
      this._bodyUsed = false;
      if (contentType && !headers.has("content-type")) headers.set("content-type", contentType);
    }
    get body() {
      const content = this._content;
      if (content === null) return null;
      if (content instanceof ReadableStream) return content;
      this._content = new ReadableStream({
        start(controller) {
          if (content.length > 0) controller.enqueue(content);
          controller.close();
        },
      });
      return this._content;
    }
    get bodyUsed() {
      return this._bodyUsed;
    }
    async _consume() {
      if (this._bodyUsed) throw new TypeError("Body has already been used. It can only be used once.");
      this._bodyUsed = true;
      const content = this._content;
      if (content === null) return new Uint8Array(0);
      if (content instanceof ReadableStream) return readAll(content);
      return content;
    }
    async arrayBuffer() {
      const bytes = await this._consume();
      return bytes.slice().buffer;
    }
    async bytes() {
      return (await this._consume()).slice();
    }
    async text() {
      return native.utf8Decode(await this._consume(), false);
    }
    async json() {
      return JSON.parse(await this.text());
    }
    async blob() {
      return new Blob([await this._consume()], { type: this.headers.get("content-type") ?? "" });
    }
    async formData() {
      const contentType = this.headers.get("content-type") ?? "";
      const bytes = await this._consume();
      if (/^multipart\/form-data/i.test(contentType)) return parseMultipart(bytes, contentType);
      if (/^application\/x-www-form-urlencoded/i.test(contentType)) {
        const form = new FormData();
        for (const [k, v] of parseFormEncoded(native.utf8Decode(bytes, false))) form.append(k, v);
        return form;
      }
      throw new TypeError(`formData() requires a multipart/form-data or application/x-www-form-urlencoded body, not ${JSON.stringify(contentType)}`);
    }
    _cloneContent() {
      if (this._bodyUsed) throw new TypeError("Body has already been used. It can only be used once.");
      if (this._content instanceof ReadableStream) {
        const [a, b] = this._content.tee();
        this._content = a;
        return b;
      }
      return this._content;
    }
  }

  const METHODS = new Set(["DELETE", "GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH"]);

  class Request extends Body {
    #method;
    #url;
    #headers;
    #signal;
    constructor(input, init = {}) {
      const source = input instanceof Request ? input : null;
      const url = source ? source.url : String(input instanceof URL ? input.href : input);
      const method = String(init.method ?? source?.method ?? "GET");
      const upper = method.toUpperCase();
      const normalizedMethod = METHODS.has(upper) ? upper : method;
      const headers = new Headers(init.headers ?? source?.headers);
      let body = null;
      if (init.body !== undefined) body = init.body;
      else if (source) body = source._cloneContent();
      if (body !== null && body !== undefined && (normalizedMethod === "GET" || normalizedMethod === "HEAD")) {
        throw new TypeError("Request with GET/HEAD method cannot have body.");
      }
      super(body, headers);
      this.#method = normalizedMethod;
      this.#url = serializeUrl(url);
      this.#headers = headers;
      this.#signal = init.signal ?? source?.signal ?? new AbortController().signal;
      this.cf = init.cf ?? source?.cf;
      this.redirect = init.redirect ?? source?.redirect ?? "follow";
    }
    get method() {
      return this.#method;
    }
    get url() {
      return this.#url;
    }
    get headers() {
      return this.#headers;
    }
    get signal() {
      return this.#signal;
    }
    clone() {
      return new Request(this, { body: this._cloneContent() });
    }
  }
  define("Request", Request);

  const NULL_BODY_STATUS = new Set([101, 204, 205, 304]);
  const REDIRECT_STATUS = new Set([301, 302, 303, 307, 308]);

  class Response extends Body {
    #status;
    #statusText;
    #headers;
    #type;
    #url = "";
    #redirected = false;
    constructor(body = null, init = {}) {
      const status = init.status === undefined ? 200 : Number(init.status);
      if (!Number.isInteger(status) || status < 200 || status > 599) {
        if (status !== 101) throw new RangeError(`Response status ${init.status} is not in the range 200 to 599`);
      }
      if (body !== null && NULL_BODY_STATUS.has(status)) {
        throw new TypeError(`Response with null body status ${status} cannot have a body`);
      }
      const headers = new Headers(init.headers);
      super(body, headers);
      this.#status = status;
      this.#statusText = init.statusText === undefined ? "" : String(init.statusText);
      this.#headers = headers;
      this.#type = "default";
      this.webSocket = init.webSocket ?? null;
      this.cf = init.cf;
    }
    static json(data, init = {}) {
      const text = JSON.stringify(data);
      if (text === undefined) throw new TypeError("Response.json: the value cannot be serialized to JSON");
      const headers = new Headers(init.headers);
      if (!headers.has("content-type")) headers.set("content-type", "application/json");
      return new Response(text, { ...init, headers });
    }
    static redirect(url, status = 302) {
      if (!REDIRECT_STATUS.has(status)) throw new RangeError(`Invalid redirect status ${status}`);
      return new Response(null, { status, headers: { location: new URL(url).href } });
    }
    static error() {
      const response = new Response(null, { status: 200 });
      response.#type = "error";
      response.#status = 0;
      return response;
    }
    get status() {
      return this.#status;
    }
    get statusText() {
      return this.#statusText;
    }
    get ok() {
      return this.#status >= 200 && this.#status <= 299;
    }
    get headers() {
      return this.#headers;
    }
    get type() {
      return this.#type;
    }
    get redirected() {
      return this.#redirected;
    }
    get url() {
      return this.#url;
    }
    // Records where a response of fetch() came from.
    _setOrigin(url, redirected) {
      this.#url = url;
      this.#redirected = redirected;
    }
    clone() {
      const copy = new Response(this._cloneContent(), { status: this.#status, statusText: this.#statusText, headers: this.#headers });
      copy.#url = this.#url;
      copy.#redirected = this.#redirected;
      return copy;
    }
  }
  define("Response", Response);

  // ---------------------------------------------------------------------------------------
  // The AI binding

  class InferenceUpstreamError extends Error {
    constructor(message, name) {
      super(message);
      Object.defineProperty(this, "name", { value: name ?? "InferenceUpstreamError", configurable: true, writable: true });
    }
  }

  const aiCalls = new Map();
  // Streams that the node forwards into the isolate (AI results, fetch() response bodies), by
  // stream id: { controller, toError(message), onEnd() }.
  const forwardedStreams = new Map();
  let nextCallId = 1;

  class Ai {
    constructor() {
      this.lastRequestId = null;
      this.lastRequestHttpStatusCode = null;
      this.lastRequestInternalStatusCode = null;
      this.aiGatewayLogId = null;
    }
    run(model, inputs, options = {}) {
      if (typeof model !== "string") {
        return Promise.reject(new TypeError("env.AI.run: the model id must be a string"));
      }
      const id = nextCallId++;
      let inputsJson;
      let optionsJson;
      try {
        inputsJson = JSON.stringify(inputs ?? {});
        const { signal, ...rest } = options ?? {};
        optionsJson = JSON.stringify(rest);
        if (signal?.aborted) return Promise.reject(signal.reason);
      } catch (error) {
        return Promise.reject(error);
      }
      return new Promise((resolve, reject) => {
        aiCalls.set(id, { resolve, reject, binding: this });
        try {
          native.aiRun(id, model, inputsJson, optionsJson);
        } catch (error) {
          // Too many subrequests.
          aiCalls.delete(id);
          reject(error);
        }
      });
    }
  }

  function settleAi(id, ok, payload) {
    const call = aiCalls.get(id);
    if (!call) return;
    aiCalls.delete(id);
    if (ok) {
      call.binding.lastRequestHttpStatusCode = 200;
      call.resolve(JSON.parse(payload));
      return;
    }
    const error = JSON.parse(payload);
    call.binding.lastRequestHttpStatusCode = error.status;
    call.binding.lastRequestInternalStatusCode = error.code;
    call.reject(new InferenceUpstreamError(`${error.code}: ${error.description}`, error.name));
  }

  function settleAiStream(id, streamId) {
    const call = aiCalls.get(id);
    if (!call) {
      native.streamCancel(streamId);
      return;
    }
    aiCalls.delete(id);
    call.binding.lastRequestHttpStatusCode = 200;
    const stream = new ReadableStream({
      start(controller) {
        forwardedStreams.set(streamId, { controller, toError: (message) => new InferenceUpstreamError(message) });
      },
      cancel() {
        forwardedStreams.delete(streamId);
        native.streamCancel(streamId);
      },
    });
    call.resolve(stream);
  }

  function streamChunk(streamId, bytes) {
    const stream = forwardedStreams.get(streamId);
    if (stream) stream.controller.enqueue(bytes);
  }

  function streamEnd(streamId, error) {
    const stream = forwardedStreams.get(streamId);
    if (!stream) return;
    forwardedStreams.delete(streamId);
    stream.onEnd?.();
    if (error === null || error === undefined) stream.controller.close();
    else stream.controller.error(stream.toError(error));
  }

  // ---------------------------------------------------------------------------------------
  // Outbound fetch()

  // Calls waiting for a response head or still streaming their body, by call id:
  // { resolve, reject, signal, method, url, onAbort, streamId }.
  const fetchCalls = new Map();

  define("fetch", async function fetch(input, init = undefined) {
    const request = new Request(input, init);
    const signal = request.signal;
    signal.throwIfAborted();
    const body = request._content === null ? null : await request._consume();
    signal.throwIfAborted();
    const id = nextCallId++;
    return new Promise((resolve, reject) => {
      const call = { resolve, reject, signal, method: request.method, url: request.url, onAbort: null, streamId: null };
      call.onAbort = () => abortFetch(id);
      fetchCalls.set(id, call);
      signal.addEventListener("abort", call.onAbort, { once: true });
      try {
        native.fetchStart(id, request.method, request.url, request.headers._flat(), body, String(request.redirect));
      } catch (error) {
        // An invalid request, a rejected URL scheme or too many subrequests.
        forgetFetch(id);
        reject(error);
      }
    });
  });

  function forgetFetch(id) {
    const call = fetchCalls.get(id);
    if (!call) return;
    fetchCalls.delete(id);
    call.signal.removeEventListener("abort", call.onAbort);
  }

  // Rejects a call that waits for its head with the signal's reason, or errors its body stream,
  // and stops the transfer on the node.
  function abortFetch(id) {
    const call = fetchCalls.get(id);
    if (!call) return;
    forgetFetch(id);
    const reason = call.signal.reason;
    if (call.streamId === null) {
      native.fetchCancel(id);
      call.reject(reason);
      return;
    }
    const stream = forwardedStreams.get(call.streamId);
    forwardedStreams.delete(call.streamId);
    native.streamCancel(call.streamId);
    stream?.controller.error(reason);
  }

  function settleFetch(id, ok, payload, streamId) {
    const call = fetchCalls.get(id);
    if (!call) {
      if (streamId !== null && streamId !== undefined) native.streamCancel(streamId);
      return;
    }
    if (!ok) {
      forgetFetch(id);
      call.reject(new TypeError(payload));
      return;
    }
    const head = JSON.parse(payload);
    const headers = [];
    for (let i = 0; i < head.headers.length; i += 2) headers.push([head.headers[i], head.headers[i + 1]]);
    let body = null;
    if (call.method === "HEAD" || NULL_BODY_STATUS.has(head.status)) {
      forgetFetch(id);
      native.streamCancel(streamId);
    } else {
      call.streamId = streamId;
      body = new ReadableStream({
        start(controller) {
          forwardedStreams.set(streamId, { controller, toError: (message) => new TypeError(message), onEnd: () => forgetFetch(id) });
        },
        cancel() {
          forgetFetch(id);
          forwardedStreams.delete(streamId);
          native.streamCancel(streamId);
        },
      });
    }
    let response;
    try {
      response = new Response(body, { status: head.status, statusText: head.statusText, headers });
    } catch (error) {
      forgetFetch(id);
      forwardedStreams.delete(streamId);
      native.streamCancel(streamId);
      call.reject(new TypeError(`fetch() to ${call.url} failed: the server sent an invalid response: ${error.message}`));
      return;
    }
    response._setOrigin(head.url, head.redirected);
    response.headers._setGuard("immutable");
    call.resolve(response);
  }


  // ---------------------------------------------------------------------------------------
  // KV namespace bindings

  const kvCalls = new Map();
  // Errors of unreachable node services → the status an uncaught one gives the request.
  const serviceStatus = new WeakMap();
  const kvTypes = ["text", "json", "arrayBuffer", "stream"];

  function kvType(typeOrOptions, bulk) {
    const type = typeof typeOrOptions === "string" ? typeOrOptions : (typeOrOptions?.type ?? "text");
    if (!kvTypes.includes(type)) {
      throw new TypeError(`Unknown response type "${type}": use one of ${kvTypes.join(", ")}`);
    }
    if (bulk && type !== "text" && type !== "json") {
      throw new TypeError(`"${type}" is not a valid type for a bulk get: use "text" or "json"`);
    }
    return type;
  }

  function kvValue(bytes, type) {
    switch (type) {
      case "json":
        return JSON.parse(native.utf8Decode(bytes, false));
      case "arrayBuffer":
        return bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
      case "stream":
        return new ReadableStream({
          start(controller) {
            controller.enqueue(bytes);
            controller.close();
          },
        });
      default:
        return native.utf8Decode(bytes, false);
    }
  }

  // Reads a numeric option. A numeric string counts as its number. Any other value that is not
  // a finite number is a TypeError, so a bad option never passes silently as "unset".
  function kvNumber(name, value) {
    if (value === undefined || value === null) return undefined;
    const number = typeof value === "string" && value.trim() !== "" ? Number(value) : value;
    if (typeof number !== "number" || !Number.isFinite(number)) {
      throw new TypeError(`${name} must be an integer from -2147483648 to 2147483647, got ${formatValue(value, 1)}`);
    }
    return number;
  }

  function kvOptions(method, options) {
    if (options === undefined || options === null) return {};
    if (typeof options !== "object") {
      throw new TypeError(`the options of KV ${method}() must be an object, got ${formatValue(options, 1)}`);
    }
    return options;
  }


  class KVNamespace {
    #binding;
    constructor(binding) {
      this.#binding = binding;
    }
    #call(op, args, value) {
      const id = nextCallId++;
      return new Promise((resolve, reject) => {
        kvCalls.set(id, { resolve, reject });
        native.kvCall(id, this.#binding, op, JSON.stringify(args), value);
      });
    }
    async #read(key, typeOrOptions, withMetadata) {
      const bulk = Array.isArray(key);
      const type = kvType(typeOrOptions, bulk);
      const cacheTtl = kvNumber("cacheTtl", typeof typeOrOptions === "object" ? typeOrOptions?.cacheTtl : undefined);
      if (bulk) {
        if (key.length > 100) throw new TypeError(`a bulk get takes at most 100 keys, got ${key.length}`);
        const { value: values } = await this.#call("get", { keys: key.map(String), cacheTtl });
        const result = new Map();
        key.forEach((name, index) => {
          const entry = values[index];
          let value = null;
          if (entry !== null) value = type === "json" ? JSON.parse(entry.text) : entry.text;
          const metadata = entry?.metadata ?? null;
          result.set(String(name), withMetadata ? { value, metadata, cacheStatus: null } : value);
        });
        return result;
      }
      const { value: entry, bytes } = await this.#call("get", { key: String(key), cacheTtl });
      const value = entry === null ? null : kvValue(bytes, type);
      if (!withMetadata) return value;
      return { value, metadata: entry?.metadata ?? null, cacheStatus: null };
    }
    get(key, typeOrOptions) {
      return this.#read(key, typeOrOptions, false);
    }
    getWithMetadata(key, typeOrOptions) {
      return this.#read(key, typeOrOptions, true);
    }
    async put(key, value, options) {
      options = kvOptions("put", options);
      const args = {
        key: String(key),
        expiration: kvNumber("expiration", options.expiration),
        expirationTtl: kvNumber("expirationTtl", options.expirationTtl),
      };
      if (options.metadata !== undefined && options.metadata !== null) {
        const metadata = JSON.stringify(options.metadata);
        if (metadata === undefined) throw new TypeError("KV put() metadata must be JSON-serializable");
        args.metadata = JSON.parse(metadata);
      }
      let bytes;
      if (typeof value === "string") bytes = native.utf8Encode(value);
      else if (value instanceof ArrayBuffer || ArrayBuffer.isView(value)) bytes = toBytes(value).slice();
      else if (value instanceof ReadableStream) bytes = await readAll(value);
      else {
        throw new TypeError("KV put() accepts only strings, ArrayBuffers, ArrayBufferViews, and ReadableStreams as values");
      }
      await this.#call("put", args, bytes);
    }
    async delete(key) {
      await this.#call("delete", { key: String(key) });
    }
    async list(options) {
      options = kvOptions("list", options);
      const { value } = await this.#call("list", {
        prefix: options.prefix === undefined || options.prefix === null ? undefined : String(options.prefix),
        limit: kvNumber("limit", options.limit),
        cursor: options.cursor === undefined || options.cursor === null ? undefined : String(options.cursor),
      });
      return value;
    }
  }

  function settleKv(id, ok, payload, bytes) {
    const call = kvCalls.get(id);
    if (!call) return;
    kvCalls.delete(id);
    const value = JSON.parse(payload);
    if (ok) {
      call.resolve({ value, bytes });
      return;
    }
    const ErrorClass = value.name === "TypeError" ? TypeError : Error;
    const error = new ErrorClass(value.message);
    if (value.status === 503) serviceStatus.set(error, 503);
    call.reject(error);
  }

  // ---------------------------------------------------------------------------------------
  // Requests into the worker

  let handler = null;
  let env = null;

  // Returns whether the default export has a scheduled handler, for the load warning.
  function init(exports, vars, aiBinding, kvBindings) {
    const candidate = exports.default;
    const hasFetch = typeof candidate?.fetch === "function";
    const hasScheduled = typeof candidate?.scheduled === "function";
    if (!hasFetch && !hasScheduled) {
      throw new TypeError(
        "the worker's main module has no default export with a fetch(request, env, ctx) or scheduled(controller, env, ctx) method",
      );
    }
    handler = candidate;
    env = { ...JSON.parse(vars) };
    if (aiBinding) env[aiBinding] = new Ai();
    for (const binding of kvBindings) env[binding] = new KVNamespace(binding);
    return hasScheduled;
  }

  function makeContext() {
    return {
      waitUntil(promise) {
        Promise.resolve(promise).catch((error) => reportError(error));
      },
      passThroughOnException() {},
      props: {},
    };
  }

  // Ends a request with an uncaught exception. An error from a node service that is down
  // carries its status (503); any other exception gives 500.
  function failRequest(id, error) {
    const status = serviceStatus.get(error) ?? 500;
    native.fail(id, String(error?.name ?? "Error"), String(error?.message ?? error), String(error?.stack ?? ""), status);
  }

  async function sendResponse(id, response) {
    if (!(response instanceof Response)) {
      native.fail(id, "TypeError", `the fetch handler returned ${formatValue(response, 1)} instead of a Response`, "", 500);
      return;
    }
    const status = response.status;
    const headers = response.headers._flat();
    const content = response._content;
    if (!(content instanceof ReadableStream)) {
      native.respond(id, status, headers, content);
      return;
    }
    native.respondStream(id, status, headers);
    const reader = content.getReader();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        const bytes = typeof value === "string" ? native.utf8Encode(value) : toBytes(value);
        if (!native.chunk(id, bytes)) {
          await reader.cancel(new DOMException("the client disconnected", "AbortError"));
          return;
        }
      }
      native.end(id);
    } catch (error) {
      failRequest(id, error);
    }
  }

  function handleFetch(id, method, url, headers, body, cf) {
    const pairs = [];
    for (let i = 0; i < headers.length; i += 2) pairs.push([headers[i], headers[i + 1]]);
    const hasBody = body != null && method !== "GET" && method !== "HEAD";
    const request = new Request(url, { method, headers: pairs, body: hasBody ? body : null, cf: JSON.parse(cf) });
    request.headers._setGuard("immutable");
    let result;
    try {
      if (typeof handler.fetch !== "function") {
        throw new TypeError("the worker's default export has no fetch(request, env, ctx) method");
      }
      result = Promise.resolve(handler.fetch(request, env, makeContext()));
    } catch (error) {
      result = Promise.reject(error);
    }
    result.then(
      (response) => sendResponse(id, response),
      (error) => failRequest(id, error),
    );
  }

  // ---------------------------------------------------------------------------------------
  // Scheduled events (cron triggers)

  class ScheduledController {
    #cron;
    #scheduledTime;
    constructor(cron, scheduledTime) {
      this.#cron = cron;
      this.#scheduledTime = scheduledTime;
    }
    get cron() {
      return this.#cron;
    }
    // Milliseconds since the Unix epoch.
    get scheduledTime() {
      return this.#scheduledTime;
    }
    // Kiln never retries a failed scheduled event, so there is no retry to turn off.
    noRetry() {}
  }

  // Waits for every promise in `outcomes`, including ones appended while waiting, and returns
  // the first failure ({ error }) or null. Each entry already catches its own rejection.
  async function firstFailure(outcomes) {
    let failure = null;
    for (let index = 0; index < outcomes.length; index++) {
      const outcome = await outcomes[index];
      if (outcome === null) continue;
      if (failure === null) failure = outcome;
      else reportError(outcome.error);
    }
    return failure;
  }

  // Converts a promise into one that fulfills with null, or with { error } when it rejects.
  function settled(promise) {
    return Promise.resolve(promise).then(
      () => null,
      (error) => ({ error }),
    );
  }

  // Runs the default export's scheduled(controller, env, ctx). The event ends when the
  // handler's promise and every promise passed to ctx.waitUntil have settled. A rejection of
  // any of them makes the outcome an exception, reported with the first error.
  function handleScheduled(id, cron, scheduledTime) {
    const outcomes = [];
    const context = {
      waitUntil(promise) {
        outcomes.push(settled(promise));
      },
      passThroughOnException() {},
      props: {},
    };
    let result;
    try {
      if (typeof handler.scheduled !== "function") {
        throw new TypeError("the worker's default export has no scheduled(controller, env, ctx) method");
      }
      result = handler.scheduled(new ScheduledController(cron, scheduledTime), env, context);
    } catch (error) {
      result = Promise.reject(error);
    }
    outcomes.unshift(settled(result));
    firstFailure(outcomes).then((failure) => {
      if (failure === null) native.scheduledDone(id);
      else failRequest(id, failure.error);
    });
  }

  return {
    init,
    fetch: handleFetch,
    scheduled: handleScheduled,
    timer: fireTimer,
    aiDone: settleAi,
    kvDone: settleKv,
    aiStream: settleAiStream,
    fetchDone: settleFetch,
    streamChunk,
    streamEnd,
  };
}
