// json.c converts between JSON text and Python objects without going
// through Python's json module: the decoder builds objects straight from the
// input (strict RFC 8259, exact integers), the encoder writes into the
// calling thread's buffer following the value table in the package
// documentation (doc.go) and the README.

#include "bridge.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// Deeper input is refused before any Python recursion limit is reached,
// and deeper results before the encoder's C recursion can exhaust the stack.
#define FIDIUS_MAX_DEPTH 1000


typedef struct {
	const char *start, *p, *end;
	int depth;
	char *err;
	size_t errlen;
	int failed;
} dec;

static void fail(dec *d, const char *at, const char *fmt, ...) {
	if (d->failed)
		return;
	d->failed = 1;
	int n = snprintf(d->err, d->errlen, "offset %zd: ", (Py_ssize_t)(at - d->start));
	if (n < 0 || (size_t)n >= d->errlen)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(d->err + n, d->errlen - (size_t)n, fmt, ap);
	va_end(ap);
}

// fail_py reports the pending Python exception (a MemoryError, or the
// interpreter's integer digit limit) as a decode error.
static void fail_py(dec *d, const char *at) {
	PyObject *value = fidius_err_take();
	PyObject *s = value ? PyObject_Str(value) : NULL;
	PyObject *text = s ? PyUnicode_AsEncodedString(s, "utf-8", "backslashreplace") : NULL;
	PyErr_Clear();
	fail(d, at, "%s", text ? PyBytes_AS_STRING(text) : "cannot convert value");
	Py_XDECREF(text);
	Py_XDECREF(s);
	Py_XDECREF(value);
}

static void skip_ws(dec *d) {
	while (d->p < d->end) {
		char c = *d->p;
		if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
			return;
		d->p++;
	}
}

static void fail_char(dec *d, const char *what) {
	if (d->p >= d->end)
		fail(d, d->p, "unexpected end of input, expected %s", what);
	else if ((unsigned char)*d->p >= 0x20 && (unsigned char)*d->p < 0x7f)
		fail(d, d->p, "unexpected character '%c', expected %s", *d->p, what);
	else
		fail(d, d->p, "unexpected byte 0x%02x, expected %s", (unsigned char)*d->p, what);
}

static PyObject *dec_value(dec *d);

static int is_digit(dec *d) { return d->p < d->end && *d->p >= '0' && *d->p <= '9'; }

static PyObject *dec_number(dec *d) {
	const char *s = d->p;
	int is_float = 0;
	if (*d->p == '-')
		d->p++;
	if (!is_digit(d)) {
		fail_char(d, "a digit");
		return NULL;
	}
	if (*d->p == '0')
		d->p++;
	else
		while (is_digit(d))
			d->p++;
	if (d->p < d->end && *d->p == '.') {
		d->p++;
		if (!is_digit(d)) {
			fail_char(d, "a digit after the decimal point");
			return NULL;
		}
		while (is_digit(d))
			d->p++;
		is_float = 1;
	}
	if (d->p < d->end && (*d->p == 'e' || *d->p == 'E')) {
		d->p++;
		if (d->p < d->end && (*d->p == '+' || *d->p == '-'))
			d->p++;
		if (!is_digit(d)) {
			fail_char(d, "a digit in the exponent");
			return NULL;
		}
		while (is_digit(d))
			d->p++;
		is_float = 1;
	}
	size_t len = (size_t)(d->p - s);
	if (!is_float && len <= 18) {
		// At most 18 characters: fits in int64 whatever the sign.
		long long v = 0;
		const char *q = s + (*s == '-');
		for (; q < d->p; q++)
			v = v * 10 + (*q - '0');
		return PyLong_FromLongLong(*s == '-' ? -v : v);
	}
	char small[64];
	char *tmp = len < sizeof small ? small : malloc(len + 1);
	if (tmp == NULL) {
		PyErr_NoMemory();
		fail_py(d, s);
		return NULL;
	}
	memcpy(tmp, s, len);
	tmp[len] = '\0';
	PyObject *o;
	if (is_float) {
		double v = PyOS_string_to_double(tmp, NULL, PyExc_OverflowError);
		o = (v == -1.0 && PyErr_Occurred()) ? NULL : PyFloat_FromDouble(v);
	} else {
		o = PyLong_FromString(tmp, NULL, 10);
	}
	if (tmp != small)
		free(tmp);
	if (o == NULL)
		fail_py(d, s);
	return o;
}

static int hex4(const char *p, unsigned *out) {
	unsigned v = 0;
	for (int i = 0; i < 4; i++) {
		char c = p[i];
		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= (unsigned)(c - '0');
		else if (c >= 'a' && c <= 'f')
			v |= (unsigned)(c - 'a' + 10);
		else if (c >= 'A' && c <= 'F')
			v |= (unsigned)(c - 'A' + 10);
		else
			return -1;
	}
	*out = v;
	return 0;
}

static char *put_utf8(char *o, unsigned c) {
	if (c < 0x80) {
		*o++ = (char)c;
	} else if (c < 0x800) {
		*o++ = (char)(0xc0 | (c >> 6));
		*o++ = (char)(0x80 | (c & 0x3f));
	} else if (c < 0x10000) {
		*o++ = (char)(0xe0 | (c >> 12));
		*o++ = (char)(0x80 | ((c >> 6) & 0x3f));
		*o++ = (char)(0x80 | (c & 0x3f));
	} else {
		*o++ = (char)(0xf0 | (c >> 18));
		*o++ = (char)(0x80 | ((c >> 12) & 0x3f));
		*o++ = (char)(0x80 | ((c >> 6) & 0x3f));
		*o++ = (char)(0x80 | (c & 0x3f));
	}
	return o;
}

// unescape decodes the escapes of a string body into UTF-8. Escaped lone
// surrogates are kept (as Python's json module keeps them), written in the
// form the "surrogatepass" error handler reads back. That handler would
// let a raw surrogate in the input through as well, so a body with an
// escaped lone surrogate has its raw bytes checked first: escapes are
// ASCII, so the body is valid UTF-8 exactly when its raw bytes are.
static PyObject *unescape(dec *d, const char *s, const char *e) {
	char small[256];
	size_t cap = (size_t)(e - s);
	char *buf = cap <= sizeof small ? small : malloc(cap);
	if (buf == NULL) {
		PyErr_NoMemory();
		fail_py(d, s);
		return NULL;
	}
	char *o = buf;
	int lone = 0;
	const char *p = s;
	while (p < e) {
		if (*p != '\\') {
			*o++ = *p++;
			continue;
		}
		const char *at = p;
		p++;
		switch (*p++) {
		case '"': *o++ = '"'; break;
		case '\\': *o++ = '\\'; break;
		case '/': *o++ = '/'; break;
		case 'b': *o++ = '\b'; break;
		case 'f': *o++ = '\f'; break;
		case 'n': *o++ = '\n'; break;
		case 'r': *o++ = '\r'; break;
		case 't': *o++ = '\t'; break;
		case 'u': {
			unsigned c, c2;
			if (e - p < 4 || hex4(p, &c) < 0) {
				fail(d, at, "invalid \\u escape in string");
				goto bad;
			}
			p += 4;
			if (c >= 0xd800 && c < 0xdc00 && e - p >= 6 && p[0] == '\\' && p[1] == 'u' &&
			    hex4(p + 2, &c2) == 0 && c2 >= 0xdc00 && c2 < 0xe000) {
				c = 0x10000 + ((c - 0xd800) << 10) + (c2 - 0xdc00);
				p += 6;
			} else if (c >= 0xd800 && c < 0xe000) {
				lone = 1;
			}
			o = put_utf8(o, c);
			break;
		}
		default:
			fail(d, at, "invalid escape '\\%c' in string", p[-1]);
			goto bad;
		}
	}
	PyObject *str = NULL;
	if (lone) {
		PyObject *raw = PyUnicode_DecodeUTF8(s, e - s, NULL);
		if (raw != NULL)
			str = PyUnicode_DecodeUTF8(buf, o - buf, "surrogatepass");
		Py_XDECREF(raw);
	} else {
		str = PyUnicode_DecodeUTF8(buf, o - buf, NULL);
	}
	if (str == NULL)
		fail(d, s - 1, "string is not valid UTF-8");
	PyErr_Clear();
	if (buf != small)
		free(buf);
	return str;
bad:
	if (buf != small)
		free(buf);
	return NULL;
}

static PyObject *dec_string(dec *d) {
	const char *s = ++d->p;
	int escaped = 0;
	while (d->p < d->end) {
		unsigned char c = (unsigned char)*d->p;
		if (c == '"')
			break;
		if (c < 0x20) {
			fail(d, d->p, "control character 0x%02x in string", c);
			return NULL;
		}
		if (c == '\\') {
			escaped = 1;
			d->p++;
			if (d->p >= d->end)
				break;
		}
		d->p++;
	}
	if (d->p >= d->end) {
		fail(d, s - 1, "unterminated string");
		return NULL;
	}
	const char *e = d->p++;
	if (escaped)
		return unescape(d, s, e);
	PyObject *str = PyUnicode_DecodeUTF8(s, e - s, NULL);
	if (str == NULL) {
		PyErr_Clear();
		fail(d, s - 1, "string is not valid UTF-8");
	}
	return str;
}

static int enter(dec *d) {
	if (++d->depth > FIDIUS_MAX_DEPTH) {
		fail(d, d->p, "JSON nests deeper than %d levels", FIDIUS_MAX_DEPTH);
		return -1;
	}
	return 0;
}

// closes consumes the end of a container (and leaves its depth) if close
// comes next, after optional white space.
static int closes(dec *d, char close) {
	skip_ws(d);
	if (d->p < d->end && *d->p == close) {
		d->p++;
		d->depth--;
		return 1;
	}
	return 0;
}

// separator follows an element: 1 for ',' (another element), 0 when close
// ends the container, -1 on anything else.
static int separator(dec *d, char close) {
	if (closes(d, close))
		return 0;
	if (d->p < d->end && *d->p == ',') {
		d->p++;
		return 1;
	}
	fail_char(d, close == ']' ? "',' or ']'" : "',' or '}'");
	return -1;
}

static PyObject *dec_array(dec *d) {
	if (enter(d) < 0)
		return NULL;
	d->p++;
	PyObject *list = PyList_New(0);
	if (list == NULL) {
		fail_py(d, d->p);
		return NULL;
	}
	if (closes(d, ']'))
		return list;
	for (;;) {
		PyObject *item = dec_value(d);
		if (item == NULL)
			goto bad;
		int rc = PyList_Append(list, item);
		Py_DECREF(item);
		if (rc < 0) {
			fail_py(d, d->p);
			goto bad;
		}
		rc = separator(d, ']');
		if (rc == 0)
			return list;
		if (rc < 0)
			goto bad;
	}
bad:
	Py_DECREF(list);
	return NULL;
}

static PyObject *dec_object(dec *d) {
	if (enter(d) < 0)
		return NULL;
	d->p++;
	PyObject *dict = PyDict_New();
	if (dict == NULL) {
		fail_py(d, d->p);
		return NULL;
	}
	if (closes(d, '}'))
		return dict;
	for (;;) {
		skip_ws(d);
		if (d->p >= d->end || *d->p != '"') {
			fail_char(d, "a string key");
			goto bad;
		}
		PyObject *key = dec_string(d);
		if (key == NULL)
			goto bad;
		skip_ws(d);
		if (d->p >= d->end || *d->p != ':') {
			Py_DECREF(key);
			fail_char(d, "':'");
			goto bad;
		}
		d->p++;
		PyObject *val = dec_value(d);
		if (val == NULL) {
			Py_DECREF(key);
			goto bad;
		}
		int rc = PyDict_SetItem(dict, key, val);
		Py_DECREF(key);
		Py_DECREF(val);
		if (rc < 0) {
			fail_py(d, d->p);
			goto bad;
		}
		rc = separator(d, '}');
		if (rc == 0)
			return dict;
		if (rc < 0)
			goto bad;
	}
bad:
	Py_DECREF(dict);
	return NULL;
}

static PyObject *dec_literal(dec *d, const char *word, PyObject *value) {
	size_t n = strlen(word);
	if ((size_t)(d->end - d->p) < n || memcmp(d->p, word, n) != 0) {
		fail(d, d->p, "invalid literal, expected '%s'", word);
		return NULL;
	}
	d->p += n;
	Py_INCREF(value);
	return value;
}

static PyObject *dec_value(dec *d) {
	skip_ws(d);
	if (d->p >= d->end) {
		fail_char(d, "a value");
		return NULL;
	}
	switch (*d->p) {
	case '"': return dec_string(d);
	case '[': return dec_array(d);
	case '{': return dec_object(d);
	case 't': return dec_literal(d, "true", Py_True);
	case 'f': return dec_literal(d, "false", Py_False);
	case 'n': return dec_literal(d, "null", Py_None);
	default:
		if (*d->p == '-' || (*d->p >= '0' && *d->p <= '9'))
			return dec_number(d);
		fail_char(d, "a value");
		return NULL;
	}
}

PyObject *fidius_json_decode(const char *in, size_t n, char *err, size_t errlen) {
	dec d = {in, in, in + n, 0, err, errlen, 0};
	err[0] = '\0';
	PyObject *o = dec_value(&d);
	if (o == NULL)
		return NULL;
	skip_ws(&d);
	if (d.p != d.end) {
		fail_char(&d, "the end of input");
		Py_DECREF(o);
		return NULL;
	}
	return o;
}

// ---- encoding ----

static int put_ll(fidius_buf *b, long long v) {
	char tmp[24];
	char *e = tmp + sizeof tmp, *p = e;
	unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
	do {
		*--p = (char)('0' + u % 10);
		u /= 10;
	} while (u);
	if (v < 0)
		*--p = '-';
	return fidius_buf_put(b, p, (size_t)(e - p));
}

static const char hexdig[] = "0123456789abcdef";

static int put_escape(fidius_buf *b, unsigned c) {
	char e[6] = {'\\', 'u', hexdig[(c >> 12) & 15], hexdig[(c >> 8) & 15], hexdig[(c >> 4) & 15], hexdig[c & 15]};
	switch (c) {
	case '"': return fidius_buf_put(b, "\\\"", 2);
	case '\\': return fidius_buf_put(b, "\\\\", 2);
	case '\b': return fidius_buf_put(b, "\\b", 2);
	case '\f': return fidius_buf_put(b, "\\f", 2);
	case '\n': return fidius_buf_put(b, "\\n", 2);
	case '\r': return fidius_buf_put(b, "\\r", 2);
	case '\t': return fidius_buf_put(b, "\\t", 2);
	default: return fidius_buf_put(b, e, 6);
	}
}

static int enc_str(fidius_buf *b, PyObject *s) {
	Py_ssize_t n = PyUnicode_GET_LENGTH(s);
	int kind = PyUnicode_KIND(s);
	const void *data = PyUnicode_DATA(s);
	if (fidius_buf_putc(b, '"') < 0)
		return -1;
	if (PyUnicode_IS_ASCII(s)) {
		const unsigned char *p = data, *run = p, *e = p + n;
		for (; p < e; p++) {
			if (*p >= 0x20 && *p != '"' && *p != '\\')
				continue;
			if (fidius_buf_put(b, (const char *)run, (size_t)(p - run)) < 0 || put_escape(b, *p) < 0)
				return -1;
			run = p + 1;
		}
		if (fidius_buf_put(b, (const char *)run, (size_t)(e - run)) < 0)
			return -1;
	} else {
		for (Py_ssize_t i = 0; i < n; i++) {
			Py_UCS4 c = PyUnicode_READ(kind, data, i);
			if (c < 0x20 || c == '"' || c == '\\' || (c >= 0xd800 && c < 0xe000)) {
				if (put_escape(b, c) < 0)
					return -1;
				continue;
			}
			char tmp[4];
			char *e = put_utf8(tmp, c);
			if (fidius_buf_put(b, tmp, (size_t)(e - tmp)) < 0)
				return -1;
		}
	}
	return fidius_buf_putc(b, '"');
}

// The encoder's state for one value: the output and the containers being
// encoded, outermost first, so that a result nesting too deep is refused
// before the C stack runs out, whatever Python's recursion limit says (a
// plugin may raise it), and a cycle can be named as such.
typedef struct {
	fidius_buf *b;
	int strict; // no str() fallback
	int depth;
	PyObject *path[FIDIUS_MAX_DEPTH];
} enc_state;

static int enc(enc_state *e, PyObject *o);
static int enc_other(enc_state *e, PyObject *o);

static int enc_int(fidius_buf *b, PyObject *o) {
	int overflow;
	long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
	if (v == -1 && PyErr_Occurred())
		return -1;
	if (!overflow)
		return put_ll(b, v);
	// int's own repr gives the exact digits, also for subclasses (IntEnum)
	// whose str() would not be a number.
	PyObject *s = PyLong_Type.tp_repr(o);
	if (s == NULL)
		return -1;
	Py_ssize_t n;
	const char *digits = PyUnicode_AsUTF8AndSize(s, &n);
	int rc = digits ? fidius_buf_put(b, digits, (size_t)n) : -1;
	Py_DECREF(s);
	return rc;
}

static int enc_float(fidius_buf *b, PyObject *o) {
	double v = PyFloat_AS_DOUBLE(o);
	if (!isfinite(v)) {
		PyErr_Format(PyExc_ValueError, "float %R cannot be represented in JSON", o);
		return -1;
	}
	char *s = PyOS_double_to_string(v, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
	if (s == NULL)
		return -1;
	int rc = fidius_buf_put(b, s, strlen(s));
	PyMem_Free(s);
	return rc;
}

static int enc_byte_array(fidius_buf *b, const unsigned char *p, Py_ssize_t n) {
	if (fidius_buf_putc(b, '[') < 0)
		return -1;
	for (Py_ssize_t i = 0; i < n; i++) {
		if ((i && fidius_buf_putc(b, ',') < 0) || put_ll(b, p[i]) < 0)
			return -1;
	}
	return fidius_buf_putc(b, ']');
}

// Items are held while they are encoded: str() of an element runs Python
// code that may mutate the container.
static int enc_seq(enc_state *e, PyObject *o) {
	fidius_buf *b = e->b;
	if (fidius_buf_putc(b, '[') < 0)
		return -1;
	int list = PyList_Check(o);
	for (Py_ssize_t i = 0; i < (list ? PyList_GET_SIZE(o) : PyTuple_GET_SIZE(o)); i++) {
		PyObject *item = list ? PyList_GET_ITEM(o, i) : PyTuple_GET_ITEM(o, i);
		Py_INCREF(item);
		int rc = (i && fidius_buf_putc(b, ',') < 0) ? -1 : enc(e, item);
		Py_DECREF(item);
		if (rc < 0)
			return -1;
	}
	return fidius_buf_putc(b, ']');
}

// json_key returns the JSON key a dict key becomes, as an exact str (a
// str subclass compares and hashes like its text), or NULL with an error.
static PyObject *json_key(PyObject *k) {
	if (PyUnicode_Check(k))
		return PyUnicode_FromObject(k);
	PyObject *s = PyObject_Str(k);
	if (s == NULL || PyUnicode_CheckExact(s))
		return s;
	PyObject *exact = PyUnicode_FromObject(s);
	Py_DECREF(s);
	return exact;
}

// remember records that key k became the JSON key text; a second dict key
// becoming the same text is an error naming both.
static int remember(PyObject *seen, PyObject *text, PyObject *k) {
	PyObject *prev = PyDict_SetDefault(seen, text, k); // borrowed
	if (prev == NULL)
		return -1;
	if (prev != k) {
		PyErr_Format(PyExc_ValueError, "keys %R and %R of a dict are both the JSON key %R", prev, k, text);
		return -1;
	}
	return 0;
}

// seen_before starts the duplicate check on meeting the first key that is
// not a str, from the keys written before it (at positions below limit).
// Distinct str keys cannot collide, so a dict of str keys never pays for
// the check.
static PyObject *seen_before(PyObject *o, Py_ssize_t limit) {
	PyObject *seen = PyDict_New();
	if (seen == NULL)
		return NULL;
	Py_ssize_t pos = 0;
	PyObject *k, *v;
	while (PyDict_Next(o, &pos, &k, &v) && pos <= limit) {
		Py_INCREF(k);
		PyObject *text = json_key(k);
		int rc = text ? remember(seen, text, k) : -1;
		Py_XDECREF(text);
		Py_DECREF(k);
		if (rc < 0) {
			Py_DECREF(seen);
			return NULL;
		}
	}
	return seen;
}

static int enc_dict(enc_state *e, PyObject *o) {
	fidius_buf *b = e->b;
	if (fidius_buf_putc(b, '{') < 0)
		return -1;
	Py_ssize_t pos = 0, before = 0;
	PyObject *k, *v;
	PyObject *seen = NULL; // JSON key -> dict key, once a key is not a str
	int rc = 0;
	while (rc == 0 && PyDict_Next(o, &pos, &k, &v)) {
		Py_INCREF(k);
		Py_INCREF(v);
		if (!PyUnicode_Check(k) && seen == NULL && (seen = seen_before(o, before)) == NULL)
			rc = -1;
		PyObject *text = NULL;
		if (rc == 0 && (seen != NULL || !PyUnicode_Check(k))) {
			text = json_key(k);
			rc = text == NULL ? -1 : seen != NULL ? remember(seen, text, k) : 0;
		}
		if (rc == 0 && before > 0)
			rc = fidius_buf_putc(b, ',');
		if (rc == 0)
			rc = enc_str(b, text != NULL ? text : k);
		if (rc == 0)
			rc = fidius_buf_putc(b, ':');
		if (rc == 0)
			rc = enc(e, v);
		Py_XDECREF(text);
		Py_DECREF(k);
		Py_DECREF(v);
		before = pos;
	}
	Py_XDECREF(seen);
	return rc < 0 ? -1 : fidius_buf_putc(b, '}');
}

static int enc_dataclass(enc_state *e, PyObject *o) {
	fidius_buf *b = e->b;
	PyObject *names = PyObject_CallOneArg(fidius_rt_current()->fields, o);
	if (names == NULL)
		return -1;
	int rc = fidius_buf_putc(b, '{');
	for (Py_ssize_t i = 0; rc == 0 && i < PyTuple_GET_SIZE(names); i++) {
		PyObject *name = PyTuple_GET_ITEM(names, i);
		if (!PyUnicode_Check(name)) {
			// Field names come from the class's __dataclass_fields__,
			// which a plugin can fill with anything.
			PyErr_Format(PyExc_TypeError, "dataclass %.100s has a field whose name is not a str: %R",
			             Py_TYPE(o)->tp_name, name);
			rc = -1;
			break;
		}
		if (i)
			rc = fidius_buf_putc(b, ',');
		if (rc == 0)
			rc = enc_str(b, name);
		if (rc == 0)
			rc = fidius_buf_putc(b, ':');
		if (rc == 0) {
			PyObject *v = PyObject_GetAttr(o, name);
			rc = v ? enc(e, v) : -1;
			Py_XDECREF(v);
		}
	}
	Py_DECREF(names);
	return rc < 0 ? -1 : fidius_buf_putc(b, '}');
}

static int is_dataclass_instance(PyObject *o) {
	fidius_rt *rt = fidius_rt_current();
	if (rt == NULL || rt->fields == NULL || PyType_Check(o))
		return 0;
	int has = PyObject_HasAttrString((PyObject *)Py_TYPE(o), "__dataclass_fields__");
	return has;
}

// too_deep reports a container one level past the limit. Every container
// on the path is alive (its parent holds it), so an address seen on the
// path is the same object: the value contains itself.
static int too_deep(enc_state *e, PyObject *o) {
	for (int i = 0; i < e->depth; i++) {
		if (e->path[i] == o) {
			PyErr_Format(PyExc_ValueError, "the %.100s contains itself, which JSON cannot represent",
			             Py_TYPE(o)->tp_name);
			return -1;
		}
	}
	PyErr_Format(PyExc_ValueError, "value nests deeper than %d levels", FIDIUS_MAX_DEPTH);
	return -1;
}

static int enc_nested(enc_state *e, PyObject *o, int (*f)(enc_state *, PyObject *)) {
	if (e->depth >= FIDIUS_MAX_DEPTH)
		return too_deep(e, o);
	e->path[e->depth++] = o;
	int rc = f(e, o);
	e->depth--;
	return rc;
}

static int enc(enc_state *e, PyObject *o) {
	fidius_buf *b = e->b;
	if (o == Py_None)
		return fidius_buf_put(b, "null", 4);
	if (o == Py_True)
		return fidius_buf_put(b, "true", 4);
	if (o == Py_False)
		return fidius_buf_put(b, "false", 5);
	if (PyUnicode_Check(o))
		return enc_str(b, o);
	if (PyLong_Check(o))
		return enc_int(b, o);
	if (PyFloat_Check(o))
		return enc_float(b, o);
	if (PyList_Check(o) || PyTuple_Check(o))
		return enc_nested(e, o, enc_seq);
	if (PyDict_Check(o))
		return enc_nested(e, o, enc_dict);
	if (PyBytes_Check(o))
		return enc_byte_array(b, (const unsigned char *)PyBytes_AS_STRING(o), PyBytes_GET_SIZE(o));
	if (PyByteArray_Check(o))
		return enc_byte_array(b, (const unsigned char *)PyByteArray_AS_STRING(o), PyByteArray_GET_SIZE(o));
	if (is_dataclass_instance(o))
		return enc_nested(e, o, enc_dataclass);
	return enc_other(e, o);
}

// as_json_value converts o, a value of none of the types above, into one
// the encoder knows, following the value table: an object whose tolist()
// gives a list, int, float, bool or str (numpy's scalars and arrays,
// array.array, memoryview) becomes that; then an integer-like object
// (__index__) its int, a float-like one (__float__) its float, a set or
// frozenset a list, a collections.abc.Mapping a dict. tolist() comes
// first because numpy's bool_ has an __index__ too, and is a bool. It returns a new reference,
// NULL with an error set, or Py_NotImplemented (borrowed) for none of these.
// No library is imported: these are duck-typed.
static PyObject *as_json_value(PyObject *o) {
	PyNumberMethods *nb = Py_TYPE(o)->tp_as_number;
	PyObject *tolist = PyObject_GetAttrString(o, "tolist");
	if (tolist == NULL) {
		if (!PyErr_ExceptionMatches(PyExc_AttributeError))
			return NULL;
		PyErr_Clear();
	} else {
		PyObject *v = PyCallable_Check(tolist) ? PyObject_CallNoArgs(tolist) : NULL;
		Py_DECREF(tolist);
		if (v == NULL) {
			if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_TypeError))
				return NULL;
			PyErr_Clear();
		} else if (v != o && (PyList_Check(v) || PyLong_Check(v) || PyFloat_Check(v) || PyUnicode_Check(v))) {
			return v; // bool is an int
		} else {
			Py_DECREF(v);
		}
	}
	if (nb != NULL && nb->nb_index != NULL) {
		PyObject *v = PyNumber_Index(o);
		if (v != NULL || !PyErr_ExceptionMatches(PyExc_TypeError))
			return v;
		PyErr_Clear();
	}
	if (nb != NULL && nb->nb_float != NULL) {
		PyObject *v = PyNumber_Float(o);
		if (v != NULL || !PyErr_ExceptionMatches(PyExc_TypeError))
			return v;
		PyErr_Clear();
	}
	if (PyAnySet_Check(o))
		return PySequence_List(o);
	fidius_rt *rt = fidius_rt_current();
	if (rt != NULL && rt->mapping != NULL) {
		int is = PyObject_IsInstance(o, rt->mapping);
		if (is < 0)
			return NULL;
		if (is) {
			PyObject *d = PyDict_New();
			if (d != NULL && PyDict_Update(d, o) < 0)
				Py_CLEAR(d);
			return d;
		}
	}
	return Py_NotImplemented;
}

// enc_other encodes what the value table does not name by type. What
// converts to nothing else becomes str(o), unless the encoder is strict;
// an iterator or a coroutine is an error either way: its str() is never
// the value a plugin meant to return.
static int enc_other(enc_state *e, PyObject *o) {
	if (PyGen_Check(o) || PyIter_Check(o)) {
		PyErr_Format(PyExc_TypeError,
		             "%.100s is an iterator: a method that yields results streams them; "
		             "declare it Streaming and call it with CallStream",
		             Py_TYPE(o)->tp_name);
		return -1;
	}
	if (PyCoro_CheckExact(o) || PyAsyncGen_CheckExact(o) || PyObject_HasAttrString(o, "__await__")) {
		PyErr_Format(PyExc_TypeError, "%.100s is awaitable: async methods are not supported", Py_TYPE(o)->tp_name);
		return -1;
	}
	PyObject *v = as_json_value(o);
	if (v == NULL)
		return -1;
	if (v != Py_NotImplemented) {
		// v is a fresh value: its own containers are checked for depth.
		if (e->depth >= FIDIUS_MAX_DEPTH) {
			Py_DECREF(v);
			return too_deep(e, o);
		}
		e->path[e->depth++] = o;
		int rc = enc(e, v);
		e->depth--;
		Py_DECREF(v);
		return rc;
	}
	if (e->strict) {
		PyErr_Format(PyExc_TypeError,
		             "%.100s has no JSON form (strict values are on, so it is not sent as its str())",
		             Py_TYPE(o)->tp_name);
		return -1;
	}
	PyObject *s = PyObject_Str(o);
	if (s == NULL)
		return -1;
	int rc = enc_str(e->b, s);
	Py_DECREF(s);
	return rc;
}

int fidius_json_encode(PyObject *o, int strict) {
	enc_state e;
	e.b = fidius_tls_buf();
	e.depth = 0;
	e.strict = strict;
	return enc(&e, o);
}
