/* libmesh route regexes: RE2 dialect check, anchored PCRE2 compile (JIT), alloc-free match. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <mesh/error.h>
#include "ctx_internal.h"
#include "regex_internal.h"

struct mesh__regex {
  mesh_ctx *ctx;
  /* Set by the compile-time allocator hook, so that a failed JIT compile
   * can be told apart: our allocator failing is MESH_ERR_NOMEM, anything
   * else (no executable memory, no JIT on this CPU) falls back to PCRE2's
   * interpreter. */
  bool alloc_failed;
  bool jit;
  pcre2_code *code;
  pcre2_match_context *mctx;
  char *pattern;
};

/* ---- the RE2 dialect ---- */

typedef struct {
  const char *what; /* static: the construct, for the message */
  size_t at, len;   /* where it is in the pattern, and how much to quote */
  bool unsupported; /* valid PCRE2 but not RE2 (else plain bad syntax) */
  const char *hint; /* static, may be NULL */
  bool open_quote;  /* the pattern ends inside \Q... with no \E */
} dialect;

static bool is_digit(char c) { return c >= '0' && c <= '9'; }
static bool is_letter(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

/* Refuses a PCRE-only construct of len bytes at p[at]. */
static bool refuse(dialect *d, size_t at, size_t len, const char *what) {
  d->what = what;
  d->at = at;
  d->len = len;
  d->unsupported = true;
  return false;
}

/* Refuses a pattern that is not a regex at all. */
static bool bad(dialect *d, size_t at, const char *what) {
  d->what = what;
  d->at = at;
  d->len = 0;
  d->unsupported = false;
  return false;
}

/* Length of a construct from p[i] up to and including the first `end`,
 * or just `min` bytes when there is none close by. */
static size_t upto(const char *p, size_t n, size_t i, char end, size_t min) {
  for (size_t j = i + 1; j < n && j < i + 32; j++)
    if (p[j] == end) return j - i + 1;
  return i + min <= n ? min : n - i;
}

/* Length of a counted quantifier {n}, {n,} or {n,m} at p[i] (which is '{'),
 * or 0 when the brace is a literal, as PCRE2 10.42 reads it. */
static size_t counted_quantifier(const char *p, size_t n, size_t i) {
  size_t j = i + 1, digits = 0;
  while (j < n && is_digit(p[j])) j++, digits++;
  if (digits == 0) return 0;
  if (j < n && p[j] == ',') {
    j++;
    while (j < n && is_digit(p[j])) j++;
  }
  return j < n && p[j] == '}' ? j - i + 1 : 0;
}

/* Skips a \Q...\E quote that starts at p[i] (the backslash); returns the
 * index just past it, n when it runs to the end. */
static size_t skip_quote(const char *p, size_t n, size_t i, bool *open) {
  for (size_t j = i + 2; j + 1 < n; j++)
    if (p[j] == '\\' && p[j + 1] == 'E') return j + 2;
  *open = true;
  return n;
}

/* Skips a character class that starts at p[i] ('['); returns the index just
 * past its ']', or n when unterminated (PCRE2 then reports it). */
static size_t skip_class(const char *p, size_t n, size_t i, dialect *d) {
  size_t j = i + 1;
  if (j < n && p[j] == '^') j++;
  if (j < n && p[j] == ']') j++; /* a leading ']' is literal */
  while (j < n) {
    char c = p[j];
    if (c == ']') return j + 1;
    if (c == '\\' && j + 1 < n && p[j + 1] == 'Q') {
      j = skip_quote(p, n, j, &d->open_quote);
      continue;
    }
    if (c == '\\') {
      j += 2;
      continue;
    }
    if (c == '[' && j + 1 < n && (p[j + 1] == ':' || p[j + 1] == '.' || p[j + 1] == '=')) {
      /* A POSIX class such as [:alpha:]: its ']' does not end the class. */
      char kind = p[j + 1];
      size_t k = j + 2;
      while (k + 1 < n && !(p[k] == kind && p[k + 1] == ']') && p[k] != ']') k++;
      if (k + 1 < n && p[k] == kind && p[k + 1] == ']') {
        j = k + 2;
        continue;
      }
    }
    j++;
  }
  return n;
}

/* The only (? forms RE2 knows: (?:...), (?P<name>...), (?<name>...) and
 * flag groups over i, m, s and U. Sets *next just past the head. */
static bool check_group(const char *p, size_t n, size_t i, size_t *next, dialect *d) {
  size_t q = i + 2; /* just past "(?" */
  char c = q < n ? p[q] : '\0';
  char c2 = q + 1 < n ? p[q + 1] : '\0';
  if (c == ':') return *next = q + 1, true;
  if (c == '=') return refuse(d, i, 3, "lookahead");
  if (c == '!') return refuse(d, i, 3, "negative lookahead");
  if (c == '<' && c2 == '=') return refuse(d, i, 4, "lookbehind");
  if (c == '<' && c2 == '!') return refuse(d, i, 4, "negative lookbehind");
  if (c == '>') return refuse(d, i, 3, "atomic group");
  if (c == '(') return refuse(d, i, 3, "conditional group");
  if (c == 'C') return refuse(d, i, upto(p, n, i, ')', 3), "callout");
  if (c == 'R') return refuse(d, i, upto(p, n, i, ')', 3), "recursion");
  if (c == '&') return refuse(d, i, upto(p, n, i, ')', 3), "subroutine call");
  if (c == '#') return refuse(d, i, 3, "comment group");
  if (c == '|') return refuse(d, i, 3, "branch reset group");
  if (is_digit(c) || ((c == '+' || c == '-') && is_digit(c2)))
    return refuse(d, i, upto(p, n, i, ')', 3), "subroutine call");
  if (c == 'P' && c2 == '=') return refuse(d, i, upto(p, n, i, ')', 4), "named backreference");
  if (c == 'P' && c2 == '>') return refuse(d, i, upto(p, n, i, ')', 4), "subroutine call");
  if ((c == 'P' && c2 == '<') || c == '<') {
    /* A named group: PCRE2 judges the name; skip it so that its characters
     * are not read as syntax. */
    size_t k = q + (c == 'P' ? 2 : 1);
    while (k < n && p[k] != '>' && p[k] != ')') k++;
    *next = k < n && p[k] == '>' ? k + 1 : k;
    return true;
  }
  /* Flags: (?flags) or (?flags:...), with at most one '-'. */
  size_t k = q;
  bool minus = false;
  for (; k < n && p[k] != ')' && p[k] != ':'; k++) {
    if (p[k] == '-' && !minus) {
      minus = true;
      continue;
    }
    if (p[k] == 'i' || p[k] == 'm' || p[k] == 's' || p[k] == 'U') continue;
    if (!is_letter(p[k])) return refuse(d, i, 3, "group syntax");
    d->hint = "; its flags are i, m, s and U";
    return refuse(d, k, 1, "flag");
  }
  if (k == q) return refuse(d, i, k < n ? 3 : 2, "group syntax");
  *next = k < n && p[k] == ':' ? k + 1 : k; /* a ')' is read by the caller */
  return true;
}

/* Refuses what PCRE2 would accept but RE2 (and so Linkerd) would not, and
 * an unmatched ')' or a trailing backslash, with a clearer message than
 * PCRE2's. Escapes, \Q...\E quotes and classes are skipped
 * so that their characters are not mistaken for syntax. */
static bool check_dialect(const char *p, size_t n, dialect *d) {
  int depth = 0;
  bool after_quantifier = false; /* the previous token was a greedy quantifier */
  size_t quant_at = 0;           /* where that quantifier starts */
  size_t i = 0;
  while (i < n) {
    char c = p[i];
    bool quant = false;
    size_t at = i;
    if (c == '\\') {
      if (i + 1 >= n) return bad(d, i, "trailing backslash");
      char e = p[i + 1];
      if (e >= '1' && e <= '9') return refuse(d, i, 2, "backreference");
      if (e == 'g' || e == 'k') {
        char open = i + 2 < n ? p[i + 2] : '\0';
        char close = open == '{' ? '}' : open == '<' ? '>' : open == '\'' ? '\'' : '\0';
        size_t len = close ? upto(p, n, i + 2, close, 1) + 2 : 2;
        while (!close && i + len < n &&
               (is_digit(p[i + len]) || p[i + len] == '-' || p[i + len] == '+'))
          len++;
        return refuse(d, i, len,
                      e == 'g' ? "backreference or subroutine call" : "named backreference");
      }
      if (e == 'Q') {
        i = skip_quote(p, n, i, &d->open_quote);
        after_quantifier = false;
        continue;
      }
      if (e == 'c' && i + 2 >= n) return bad(d, i, "incomplete escape \\c");
      i += 2;
      if (e == 'c') i++; /* \cX: X is a literal */
      if ((e == 'x' || e == 'o' || e == 'p' || e == 'P' || e == 'N') && i < n && p[i] == '{') {
        while (i < n && p[i] != '}') i++; /* \x{41}: the braces are not a quantifier */
        if (i < n) i++;
      }
    } else if (c == '[') {
      i = skip_class(p, n, i, d);
    } else if (c == '(') {
      depth++;
      if (i + 1 < n && p[i + 1] == '*')
        return refuse(d, i, upto(p, n, i, ')', 2), "backtracking verb or start option");
      if (i + 1 < n && p[i + 1] == '?') {
        size_t next;
        if (!check_group(p, n, i, &next, d)) return false;
        i = next;
      } else {
        i++;
      }
    } else if (c == ')') {
      if (--depth < 0) return bad(d, i, "unmatched ')'");
      i++;
    } else if (c == '*' || c == '+' || c == '?') {
      if (after_quantifier && c == '+')
        return refuse(d, quant_at, i + 1 - quant_at, "possessive quantifier");
      /* "??" makes the one before lazy; otherwise this is a quantifier. */
      quant = !(after_quantifier && c == '?');
      i++;
    } else if (c == '{') {
      size_t qlen = counted_quantifier(p, n, i);
      quant = qlen > 0;
      i += qlen ? qlen : 1;
    } else {
      i++;
    }
    after_quantifier = quant;
    if (quant) quant_at = at;
  }
  return true;
}

/* ---- compile ---- */

static void *re_malloc(PCRE2_SIZE size, void *ud) {
  mesh__regex *re = ud;
  void *p = mesh__malloc(re->ctx, size);
  if (!p) re->alloc_failed = true;
  return p;
}

static void re_free(void *p, void *ud) {
  mesh__regex *re = ud;
  mesh__free(re->ctx, p);
}

/* The match context's hooks take the context itself: pcre2_match may call
 * them from any thread, where writing alloc_failed would be a race. */
static void *ctx_malloc(PCRE2_SIZE size, void *ud) { return mesh__malloc(ud, size); }
static void ctx_free(void *p, void *ud) { mesh__free(ud, p); }

static void set_why(char *why, size_t why_size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_why(char *why, size_t why_size, const char *fmt, ...) {
  if (!why || !why_size) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, why_size, fmt, ap);
  va_end(ap);
}

void mesh__regex_free(mesh__regex *re) {
  if (!re) return;
  pcre2_code_free(re->code);
  pcre2_match_context_free(re->mctx);
  mesh__free(re->ctx, re->pattern);
  mesh__free(re->ctx, re);
}

static pthread_once_t key_once = PTHREAD_ONCE_INIT;
static pthread_key_t md_key;
static bool md_key_ok;

static void free_match_data(void *md) { pcre2_match_data_free(md); }
static void make_key(void) { md_key_ok = pthread_key_create(&md_key, free_match_data) == 0; }

int mesh__regex_compile(mesh_ctx *ctx, const char *pattern, size_t len, mesh__regex **ret,
                        char *why, size_t why_size, size_t *offset) {
  if (!ctx || (!pattern && len) || !ret) return MESH_ERR_INVALID;
  if (!pattern) pattern = "";
  size_t off_unused;
  if (!offset) offset = &off_unused;
  *offset = 0;
  set_why(why, why_size, "%s", "");

  if (len > MESH__REGEX_MAX_LEN) {
    set_why(why, why_size, "pattern is longer than %u bytes", (unsigned)MESH__REGEX_MAX_LEN);
    *offset = MESH__REGEX_MAX_LEN;
    return MESH_ERR_PARSE;
  }
  dialect d = {0};
  if (!check_dialect(pattern, len, &d)) {
    if (d.unsupported)
      set_why(why, why_size, "%s '%.*s' is not supported (RE2 syntax%s)", d.what, (int)d.len,
              pattern + d.at, d.hint ? d.hint : "");
    else
      set_why(why, why_size, "%s", d.what);
    *offset = d.at;
    return MESH_ERR_PARSE;
  }
  /* Made now rather than at the first match, so a failure is reported here. */
  pthread_once(&key_once, make_key);
  if (!md_key_ok) return MESH_ERR_NOMEM;

  mesh__regex *re = mesh__calloc(ctx, 1, sizeof *re);
  if (!re) return MESH_ERR_NOMEM;
  re->ctx = ctx;
  re->pattern = mesh__strndup(ctx, pattern, len);
  pcre2_general_context *gc = pcre2_general_context_create(re_malloc, re_free, re);
  pcre2_general_context *mgc = pcre2_general_context_create(ctx_malloc, ctx_free, ctx);
  pcre2_compile_context *cc = gc ? pcre2_compile_context_create(gc) : NULL;
  re->mctx = mgc ? pcre2_match_context_create(mgc) : NULL;
  int rc = 0;
  if (!re->pattern || !gc || !mgc || !cc || !re->mctx) {
    rc = MESH_ERR_NOMEM;
    goto out;
  }
  pcre2_set_match_limit(re->mctx, MESH__REGEX_MATCH_LIMIT);
  pcre2_set_depth_limit(re->mctx, MESH__REGEX_DEPTH_LIMIT);
  pcre2_set_heap_limit(re->mctx, MESH__REGEX_HEAP_LIMIT_KIB);

  /* UTF-8 as RE2; $ only at the very end as RE2 (not before a final
   * newline); no \C, which can split a UTF-8 character; no numbered
   * captures, which nothing reads. Invalid UTF-8 in a path cannot match
   * but is not an error. */
  /* The whole path must match, every alternative included: the anchoring is
   * PCRE2's own (ANCHORED + ENDANCHORED), not text wrapped around the
   * pattern, which a crafted pattern could close early and escape. */
  uint32_t opts = PCRE2_UTF | PCRE2_MATCH_INVALID_UTF | PCRE2_DOLLAR_ENDONLY |
                  PCRE2_NEVER_BACKSLASH_C | PCRE2_NO_AUTO_CAPTURE | PCRE2_ANCHORED |
                  PCRE2_ENDANCHORED;
  int err;
  PCRE2_SIZE erroff;
  re->code = pcre2_compile((PCRE2_SPTR)pattern, len, opts, &err, &erroff, cc);
  if (!re->code) {
    if (re->alloc_failed || err == PCRE2_ERROR_HEAP_FAILED) {
      rc = MESH_ERR_NOMEM;
      goto out;
    }
    PCRE2_UCHAR msg[256];
    if (pcre2_get_error_message(err, msg, sizeof msg) < 0)
      snprintf((char *)msg, sizeof msg, "error %d", err);
    set_why(why, why_size, "%s", (const char *)msg);
    *offset = erroff > len ? len : erroff;
    rc = MESH_ERR_PARSE;
    goto out;
  }
  int jrc = pcre2_jit_compile(re->code, PCRE2_JIT_COMPLETE);
  if (jrc == 0) {
    re->jit = true;
  } else if (re->alloc_failed) {
    rc = MESH_ERR_NOMEM;
    goto out;
  }
out:
  pcre2_compile_context_free(cc);
  pcre2_general_context_free(gc);
  pcre2_general_context_free(mgc);
  if (rc < 0) {
    mesh__regex_free(re);
    return rc;
  }
  *ret = re;
  return 0;
}

/* ---- match ---- */

/* One match block per thread, made at the thread's first match and freed
 * when it exits: pcre2_match needs a writable block, and making one per
 * call would allocate on the hot path. It uses the C library's allocator,
 * since it outlives any one mesh_ctx. Its single ovector pair is enough:
 * only "did it match" is asked. */
static pcre2_match_data *thread_match_data(void) {
  pthread_once(&key_once, make_key);
  if (!md_key_ok) return NULL;
  pcre2_match_data *md = pthread_getspecific(md_key);
  if (md) return md;
  md = pcre2_match_data_create(1, NULL);
  if (md && pthread_setspecific(md_key, md) != 0) {
    pcre2_match_data_free(md);
    md = NULL;
  }
  return md;
}

int mesh__regex_match(const mesh__regex *re, const char *s, size_t len) {
  if (!re || (!s && len)) return 0;
  pcre2_match_data *md = thread_match_data();
  if (!md) return 0;
  /* Errors, including the match, depth and heap limits, are "no match". */
  int rc = pcre2_match(re->code, (PCRE2_SPTR)(s ? s : ""), len, 0, 0, md, re->mctx);
  return rc >= 0;
}

const char *mesh__regex_pattern(const mesh__regex *re) { return re ? re->pattern : NULL; }
int mesh__regex_is_jit(const mesh__regex *re) { return re && re->jit; }
