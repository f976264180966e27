/* libmesh route regexes: whole-path RE2-dialect regexes over PCRE2, matched without allocating. */
#ifndef MESH_REGEX_INTERNAL_H
#define MESH_REGEX_INTERNAL_H

#include <stddef.h>
#include <mesh/ctx.h>

typedef struct mesh__regex mesh__regex;

/* Bounds on one match, so that a pathological pattern cannot hold a worker:
 * a match that reaches one of them counts as no match. */
#define MESH__REGEX_MATCH_LIMIT 100000u
#define MESH__REGEX_DEPTH_LIMIT 5000u
#define MESH__REGEX_HEAP_LIMIT_KIB 1024u
/* Longer patterns are refused: a route regex is a path, not a program. */
#define MESH__REGEX_MAX_LEN 16384u

/* Compile len bytes of pattern anchored at both ends, every alternative
 * included (as if written ^(?:pattern)$): it must match a whole subject, as Linkerd's pathRegex does. The dialect is RE2's (UTF-8; flags
 * i, m, s, U; named groups (?P<n>...) and (?<n>...)); PCRE-only constructs
 * such as backreferences, lookaround, atomic groups, possessive quantifiers,
 * recursion, conditionals, callouts, comments and verbs are refused.
 * Memory comes from ctx, which must outlive the regex.
 * Returns 0 with *ret set; MESH_ERR_PARSE with a reason in why (always
 * NUL-terminated) and the byte offset into pattern in *offset;
 * MESH_ERR_NOMEM; MESH_ERR_INVALID for NULL arguments. */
int mesh__regex_compile(mesh_ctx *ctx, const char *pattern, size_t len, mesh__regex **ret,
                        char *why, size_t why_size, size_t *offset);
void mesh__regex_free(mesh__regex *re); /* NULL is a no-op */

/* 1 when all len bytes of s match, 0 otherwise (also when a limit is hit or
 * the thread's match block cannot be made). Thread-safe. Allocates nothing
 * after a thread's first match: each thread keeps one PCRE2 match block,
 * freed when the thread exits. s may be NULL when len is 0. */
int mesh__regex_match(const mesh__regex *re, const char *s, size_t len);

/* The pattern as written (NUL-terminated copy). */
const char *mesh__regex_pattern(const mesh__regex *re);
/* 1 when PCRE2's JIT compiled the regex, 0 when it is interpreted. */
int mesh__regex_is_jit(const mesh__regex *re);

#endif
