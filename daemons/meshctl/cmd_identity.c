/* meshctl identity: set up the trust anchors, issuer and token key, mint tokens, get certificates from the identity service, and inspect them. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include <mesh/rpc.h>

#include "meshctl.h"

#define MAX_LIFETIME_S (10ull * 365 * 86400) /* what mesh_ca_set_lifetime accepts */
#define MAX_SKEW_S 86400ull                   /* what mesh_ca_set_clock_skew accepts */
#define KEY_MAX_BYTES 65536u                  /* mesh_key_parse's limit */

/* ---- Shared by the subcommands ------------------------------------------ */

static void usage(FILE *out) {
  fprintf(out,
          "Set up and inspect the mesh's identity: trust anchors, the issuer that signs\n"
          "workload certificates, and the key that signs workload tokens.\n\n"
          "Usage:\n  meshctl identity SUBCOMMAND [flags]\n\n"
          "Subcommands:\n"
          "  init        generate (or accept) trust anchors, an issuer and a token key\n"
          "  token       mint a token a workload presents to get its certificate\n"
          "  get-issuer  show the issuer certificate and whether the trust anchors sign it\n"
          "  inspect     show the certificates in a PEM file, and verify them\n"
          "  certify     get a workload certificate from the identity service\n\n"
          "Run 'meshctl identity SUBCOMMAND --help' for a subcommand's flags.\n"
          "Exit status: 0 on success, 1 on failure, 2 for a usage error.\n");
}

/* "2026-01-02T03:04:05Z". */
static void rfc3339(uint64_t t, char buf[32]) {
  time_t tt = (time_t)t;
  struct tm tm;
  if (!gmtime_r(&tt, &tm) || !strftime(buf, 32, "%Y-%m-%dT%H:%M:%SZ", &tm))
    snprintf(buf, 32, "@%llu", (unsigned long long)t);
}

/* Whole days from now to t, rounded towards minus infinity (so -1 once expired). */
static long long days_left(uint64_t t, uint64_t now) {
  long long d = (long long)t - (long long)now;
  return d >= 0 ? d / 86400 : -((-d + 86399) / 86400);
}


/* Reads and parses a PEM certificate file; prints why, naming the file, on failure. */
static bool load_certs(const char *prog, mesh_ctx *ctx, const char *path, mesh_certs **ret) {
  char *buf;
  size_t len;
  if (!meshctl_read(prog, path, MESH_CERTS_MAX_BYTES, &buf, &len)) return false;
  const char *why = NULL;
  int rc = mesh_certs_parse(ctx, buf, len, &why, ret);
  free(buf);
  if (rc < 0) {
    fprintf(stderr, "%s: %s: not a PEM certificate file: %s\n", prog, path,
            why ? why : mesh_strerror(rc));
    return false;
  }
  return true;
}

/* A Go duration in whole seconds, as libmesh reads them in manifests; at most 100 years. */
static bool parse_duration(const char *s, uint64_t *ret) {
  uint64_t v;
  if (mesh_duration_parse_s(s, &v, NULL) < 0 || v > 100ull * 365 * 86400) return false;
  *ret = v;
  return true;
}

/* As Go's time.Duration prints it: "24h0m0s", "1m30s", "20s", "0s". */
static void format_duration(uint64_t s, char buf[48]) {
  if (s >= 3600)
    snprintf(buf, 48, "%lluh%llum%llus", (unsigned long long)(s / 3600),
             (unsigned long long)(s % 3600 / 60), (unsigned long long)(s % 60));
  else if (s >= 60)
    snprintf(buf, 48, "%llum%llus", (unsigned long long)(s / 60), (unsigned long long)(s % 60));
  else snprintf(buf, 48, "%llus", (unsigned long long)s);
}

static bool join(const char *prog, char *buf, size_t size, const char *dir, const char *name) {
  size_t dl = strlen(dir);
  int n = snprintf(buf, size, "%s%s%s", dir, dl && dir[dl - 1] == '/' ? "" : "/", name);
  if (n < 0 || (size_t)n >= size) {
    fprintf(stderr, "%s: %s: path too long\n", prog, dir);
    return false;
  }
  return true;
}

static const char *san_kind(int type) {
  switch (type) {
  case MESH_SAN_DNS: return "DNS";
  case MESH_SAN_URI: return "URI";
  case MESH_SAN_IP: return "IP";
  case MESH_SAN_EMAIL: return "email";
  default: return "other";
  }
}

/* ---- init ----------------------------------------------------------------- */

static void usage_init(FILE *out) {
  fprintf(out,
          "Set up the mesh's identity in a directory, as `linkerd install` does: trust\n"
          "anchors, an issuer signed by them, and the key that signs workload tokens.\n\n"
          "Usage:\n"
          "  meshctl identity init --dir DIR [flags]\n"
          "  meshctl identity init --dir DIR --identity-trust-anchors-file FILE\n"
          "      --identity-issuer-certificate-file FILE --identity-issuer-key-file FILE [flags]\n\n"
          "Flags:\n"
          "      --dir DIR                                where to write (made if missing)\n"
          "      --identity-trust-domain DOMAIN           the trust domain (default \"cluster.local\")\n"
          "      --cp-namespace NS                        the control plane's namespace (default \"linkerd\")\n"
          "      --identity-trust-anchors-file FILE       PEM trust anchors to use instead of a new one\n"
          "      --identity-issuer-certificate-file FILE  PEM issuer certificate, signed by an anchor\n"
          "      --identity-issuer-key-file FILE          the issuer's private key (PEM)\n"
          "      --identity-issuance-lifetime DURATION    lifetime of workload certificates (default 24h)\n"
          "      --identity-clock-skew-allowance DURATION how far notBefore is backdated (default 20s)\n"
          "      --force                                  replace an identity already in DIR\n"
          "  -h, --help                                   show this help\n\n"
          "Without the file flags, a trust anchor root.<ns>.<domain> and an issuer\n"
          "identity.<ns>.<domain> (CA, pathlen 0) are generated, each valid 365 days.\n"
          "Writes DIR/ca.crt, DIR/issuer.crt, DIR/issuer.key (0600), DIR/token.key (0600),\n"
          "DIR/token.pub and DIR/identity.json. Durations are like 24h, 1h30m or 20s.\n");
}

/* Writes text to dir/name with mode, through a temporary file and a rename,
 * so that a reader never sees half a key and the mode holds whatever the umask. */
static bool write_file(const char *prog, const char *dir, const char *name, const char *text,
                       mode_t mode) {
  char path[4096], tmp[4096], tmpname[256];
  snprintf(tmpname, sizeof tmpname, ".%s.tmp", name);
  if (!join(prog, path, sizeof path, dir, name) || !join(prog, tmp, sizeof tmp, dir, tmpname))
    return false;
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, mode);
  bool ok = fd >= 0 && fchmod(fd, mode) == 0;
  for (size_t off = 0, len = strlen(text); ok && off < len;) {
    ssize_t n = write(fd, text + off, len - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) ok = false;
    else off += (size_t)n;
  }
  int err = errno;
  if (fd >= 0 && close(fd) != 0 && ok) ok = false, err = errno;
  if (ok && rename(tmp, path) != 0) ok = false, err = errno;
  if (!ok) {
    fprintf(stderr, "%s: %s: %s\n", prog, path, strerror(err));
    if (fd >= 0) unlink(tmp);
  }
  return ok;
}

/* Checks user-supplied anchors and issuer; on success *anchors, *issuer and
 * *key are set and the caller frees them. Every message names the file at fault. */
static bool load_supplied(const char *prog, mesh_ctx *ctx, const char *anchors_file,
                          const char *issuer_file, const char *key_file, uint64_t now,
                          mesh_certs **ret_anchors, mesh_certs **ret_issuer, mesh_key **ret_key) {
  mesh_certs *anchors = NULL, *issuer = NULL;
  mesh_key *key = NULL;
  mesh_ca *ca = NULL;
  char *issuer_buf = NULL, *key_buf = NULL, when[32];
  size_t issuer_len = 0, key_len = 0;
  const char *why = NULL;
  bool ok = false;
  int rc;

  if (!load_certs(prog, ctx, anchors_file, &anchors)) goto done;
  for (size_t i = 0; i < mesh_certs_count(anchors); i++) {
    const char *subject = mesh_certs_subject(anchors, i);
    if (!mesh_certs_is_ca(anchors, i)) {
      fprintf(stderr, "%s: %s: certificate %zu (%s) is not a CA, so it cannot be a trust anchor\n",
              prog, anchors_file, i + 1, subject);
      goto done;
    }
    if (now > mesh_certs_not_after(anchors, i) || now < mesh_certs_not_before(anchors, i)) {
      bool expired = now > mesh_certs_not_after(anchors, i);
      rfc3339(expired ? mesh_certs_not_after(anchors, i) : mesh_certs_not_before(anchors, i), when);
      fprintf(stderr, "%s: %s: trust anchor %zu (%s) %s %s\n", prog, anchors_file, i + 1, subject,
              expired ? "expired on" : "is not valid until", when);
      goto done;
    }
  }

  if (!meshctl_read(prog, issuer_file, MESH_CERTS_MAX_BYTES, &issuer_buf, &issuer_len)) goto done;
  rc = mesh_certs_parse(ctx, issuer_buf, issuer_len, &why, &issuer);
  if (rc < 0) {
    fprintf(stderr, "%s: %s: not a PEM certificate file: %s\n", prog, issuer_file,
            why ? why : mesh_strerror(rc));
    goto done;
  }
  if (!mesh_certs_is_ca(issuer, 0)) {
    fprintf(stderr,
            "%s: %s: the issuer certificate (%s) is not a CA: an issuer needs "
            "basicConstraints CA:TRUE to sign workload certificates\n",
            prog, issuer_file, mesh_certs_subject(issuer, 0));
    goto done;
  }
  if (now > mesh_certs_not_after(issuer, 0)) {
    rfc3339(mesh_certs_not_after(issuer, 0), when);
    fprintf(stderr, "%s: %s: the issuer certificate (%s) expired on %s\n", prog, issuer_file,
            mesh_certs_subject(issuer, 0), when);
    goto done;
  }
  if (now < mesh_certs_not_before(issuer, 0)) {
    rfc3339(mesh_certs_not_before(issuer, 0), when);
    fprintf(stderr, "%s: %s: the issuer certificate (%s) is not valid until %s\n", prog,
            issuer_file, mesh_certs_subject(issuer, 0), when);
    goto done;
  }

  if (!meshctl_read(prog, key_file, KEY_MAX_BYTES, &key_buf, &key_len)) goto done;
  rc = mesh_key_parse(ctx, key_buf, key_len, &why, &key);
  if (rc < 0) {
    fprintf(stderr, "%s: %s: not a usable private key: %s\n", prog, key_file,
            why ? why : mesh_strerror(rc));
    goto done;
  }
  if (!mesh_key_pem(key)) {
    fprintf(stderr, "%s: %s: holds a public key; the issuer's private key is needed\n", prog,
            key_file);
    goto done;
  }
  /* mesh_ca_new is what the identity service will do with these files. */
  rc = mesh_ca_new(ctx, issuer_buf, issuer_len, key_buf, key_len, &why, &ca);
  if (rc < 0) {
    fprintf(stderr, "%s: %s does not work with %s: %s\n", prog, key_file, issuer_file,
            why ? why : mesh_strerror(rc));
    goto done;
  }
  rc = mesh_certs_verify(issuer, anchors, now, &why);
  if (rc < 0) {
    fprintf(stderr, "%s: %s: the issuer (%s) is not signed by a trust anchor in %s: %s\n", prog,
            issuer_file, mesh_certs_subject(issuer, 0), anchors_file,
            why ? why : mesh_strerror(rc));
    goto done;
  }
  ok = true;
done:
  mesh_ca_free(ca);
  if (key_buf) memset(key_buf, 0, key_len);
  free(key_buf);
  free(issuer_buf);
  if (ok) {
    *ret_anchors = anchors;
    *ret_issuer = issuer;
    *ret_key = key;
  } else {
    mesh_certs_free(anchors);
    mesh_certs_free(issuer);
    mesh_key_free(key);
  }
  return ok;
}

static int init_run(int argc, char **argv) {
  enum {
    OPT_DIR = 256, OPT_TD, OPT_CPNS, OPT_ANCHORS, OPT_ISSUER, OPT_KEY, OPT_LIFETIME, OPT_SKEW,
    OPT_FORCE
  };
  static const struct option opts[] = {
      {"dir", required_argument, NULL, OPT_DIR},
      {"identity-trust-domain", required_argument, NULL, OPT_TD},
      {"cp-namespace", required_argument, NULL, OPT_CPNS},
      {"identity-trust-anchors-file", required_argument, NULL, OPT_ANCHORS},
      {"identity-issuer-certificate-file", required_argument, NULL, OPT_ISSUER},
      {"identity-issuer-key-file", required_argument, NULL, OPT_KEY},
      {"identity-issuance-lifetime", required_argument, NULL, OPT_LIFETIME},
      {"identity-clock-skew-allowance", required_argument, NULL, OPT_SKEW},
      {"force", no_argument, NULL, OPT_FORCE},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  const char *prog = argv[0], *dir = NULL, *td = MESH_IDENTITY_DEFAULT_TRUST_DOMAIN;
  const char *cp_ns = MESH_IDENTITY_DEFAULT_CP_NS, *anchors_file = NULL, *issuer_file = NULL;
  const char *key_file = NULL;
  uint64_t lifetime = MESH_CA_DEFAULT_LIFETIME_S, skew = MESH_CA_DEFAULT_CLOCK_SKEW_S;
  bool force = false;
  int c;
  optind = 0;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    switch (c) {
    case OPT_DIR: dir = optarg; break;
    case OPT_TD: td = optarg; break;
    case OPT_CPNS: cp_ns = optarg; break;
    case OPT_ANCHORS: anchors_file = optarg; break;
    case OPT_ISSUER: issuer_file = optarg; break;
    case OPT_KEY: key_file = optarg; break;
    case OPT_LIFETIME:
    case OPT_SKEW:
      if (!parse_duration(optarg, c == OPT_LIFETIME ? &lifetime : &skew)) {
        fprintf(stderr, "%s: invalid duration '%s' (use hours, minutes and seconds: 24h, 1h30m, 20s)\n",
                prog, optarg);
        return meshctl_usage_error(prog);
      }
      break;
    case OPT_FORCE: force = true; break;
    case 'h': usage_init(stdout); return MESHCTL_OK;
    default: return meshctl_usage_error(prog);
    }
  }
  const char *problem = NULL;
  if (optind < argc) {
    fprintf(stderr, "%s: unexpected argument '%s'\n", prog, argv[optind]);
    return meshctl_usage_error(prog);
  }
  if (!dir || !*dir) problem = "give the directory to write to with --dir DIR";
  else if (!mesh_dns_name_valid(td))
    problem = "--identity-trust-domain must be a DNS name (lower-case letters, digits, '-' and '.')";
  else if (!mesh_dns_label_valid(cp_ns))
    problem = "--cp-namespace must be a namespace name (lower-case letters, digits and '-', at most 63)";
  else if ((issuer_file != NULL) != (key_file != NULL))
    problem = "--identity-issuer-certificate-file and --identity-issuer-key-file go together";
  else if ((issuer_file != NULL) != (anchors_file != NULL))
    problem = "--identity-trust-anchors-file goes with --identity-issuer-certificate-file and "
              "--identity-issuer-key-file: give all three, or none to generate them";
  else if (lifetime == 0 || lifetime > MAX_LIFETIME_S)
    problem = "--identity-issuance-lifetime must be more than 0s and at most 10 years (87600h)";
  else if (skew > MAX_SKEW_S)
    problem = "--identity-clock-skew-allowance must be at most 24h";
  if (problem) {
    fprintf(stderr, "%s: %s\n", prog, problem);
    return meshctl_usage_error(prog);
  }
  /* identity.<ns>.<domain> is a certificate CN, at most 64 bytes. */
  if (strlen("identity.") + strlen(cp_ns) + 1 + strlen(td) > 64) {
    fprintf(stderr, "%s: identity.%s.%s is longer than a certificate name may be (64 bytes)\n",
            prog, cp_ns, td);
    return meshctl_usage_error(prog);
  }

  struct stat st;
  if (stat(dir, &st) == 0 && !S_ISDIR(st.st_mode)) {
    fprintf(stderr, "%s: %s: not a directory\n", prog, dir);
    return MESHCTL_FAILED;
  }
  char path[4096];
  if (!join(prog, path, sizeof path, dir, "issuer.key")) return MESHCTL_FAILED;
  if (!force && lstat(path, &st) == 0) {
    fprintf(stderr,
            "%s: %s already exists: refusing to replace the issuer key (use --force to "
            "overwrite the identity in %s)\n",
            prog, path, dir);
    return MESHCTL_FAILED;
  }

  int status = MESHCTL_FAILED;
  mesh_ca *anchor_ca = NULL, *issuer_ca = NULL;
  mesh_certs *own_anchors = NULL, *own_issuer = NULL;
  mesh_key *own_key = NULL, *token_key = NULL;
  json_t *config = NULL;
  char *config_text = NULL;
  mesh_ctx *ctx = meshctl_ctx(prog);
  if (!ctx) return MESHCTL_FAILED;
  uint64_t now = (uint64_t)time(NULL);
  const mesh_certs *anchors, *issuer;
  const mesh_key *issuer_key;
  int rc;
  if (anchors_file) {
    if (!load_supplied(prog, ctx, anchors_file, issuer_file, key_file, now, &own_anchors,
                       &own_issuer, &own_key))
      goto done;
    anchors = own_anchors;
    issuer = own_issuer;
    issuer_key = own_key;
  } else {
    rc = mesh_ca_init(ctx, td, cp_ns, now, 0, &anchor_ca, &issuer_ca);
    if (rc < 0) {
      fprintf(stderr, "%s: cannot generate the trust anchor and issuer: %s\n", prog,
              mesh_strerror(rc));
      goto done;
    }
    anchors = mesh_ca_certs(anchor_ca);
    issuer = mesh_ca_certs(issuer_ca);
    issuer_key = mesh_ca_key(issuer_ca);
  }
  rc = mesh_key_generate(ctx, &token_key);
  if (rc < 0) {
    fprintf(stderr, "%s: cannot generate the token key: %s\n", prog, mesh_strerror(rc));
    goto done;
  }
  char life[48], skewbuf[48];
  format_duration(lifetime, life);
  format_duration(skew, skewbuf);
  config = json_pack("{s:s, s:s, s:s, s:s}", "trustDomain", td, "controlPlaneNamespace", cp_ns,
                     "issuanceLifetime", life, "clockSkewAllowance", skewbuf);
  config_text = config ? json_dumps(config, JSON_INDENT(2)) : NULL;
  size_t cl = config_text ? strlen(config_text) : 0;
  char *nl = config_text ? realloc(config_text, cl + 2) : NULL;
  if (!nl) {
    fprintf(stderr, "%s: out of memory\n", prog);
    goto done;
  }
  config_text = nl;
  memcpy(config_text + cl, "\n", 2);

  /* Only now that everything checked out, so that a refusal leaves nothing behind. */
  if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
    fprintf(stderr, "%s: %s: %s\n", prog, dir, strerror(errno));
    goto done;
  }
  /* The issuer key goes last: its presence is what guards against overwriting. */
  if (!write_file(prog, dir, "ca.crt", mesh_certs_bundle_pem(anchors, 0), 0644) ||
      !write_file(prog, dir, "issuer.crt", mesh_certs_bundle_pem(issuer, 0), 0644) ||
      !write_file(prog, dir, "token.key", mesh_key_pem(token_key), 0600) ||
      !write_file(prog, dir, "token.pub", mesh_key_public_pem(token_key), 0644) ||
      !write_file(prog, dir, "identity.json", config_text, 0644) ||
      !write_file(prog, dir, "issuer.key", mesh_key_pem(issuer_key), 0600))
    goto done;

  char nb[32], na[32];
  printf("%s the identity of trust domain %s (control plane namespace %s) in %s:\n",
         anchors_file ? "Installed" : "Generated", td, cp_ns, dir);
  for (size_t i = 0; i < mesh_certs_count(anchors); i++) {
    rfc3339(mesh_certs_not_before(anchors, i), nb);
    rfc3339(mesh_certs_not_after(anchors, i), na);
    printf("  %-14s trust anchor %s, valid %s to %s\n", i ? "" : "ca.crt",
           mesh_certs_subject(anchors, i), nb, na);
  }
  rfc3339(mesh_certs_not_before(issuer, 0), nb);
  rfc3339(mesh_certs_not_after(issuer, 0), na);
  printf("  %-14s issuer %s, valid %s to %s (%lld days)\n", "issuer.crt",
         mesh_certs_subject(issuer, 0), nb, na, days_left(mesh_certs_not_after(issuer, 0), now));
  printf("  %-14s the issuer's private key (mode 0600)\n", "issuer.key");
  printf("  %-14s the token signing key (mode 0600), key id %s\n", "token.key",
         mesh_key_id(token_key));
  printf("  %-14s the token verification key\n", "token.pub");
  printf("  %-14s issuance lifetime %s, clock skew allowance %s\n", "identity.json", life, skewbuf);
  status = fflush(stdout) == 0 ? MESHCTL_OK : MESHCTL_FAILED;
done:
  free(config_text);
  json_decref(config);
  mesh_key_free(token_key);
  mesh_key_free(own_key);
  mesh_certs_free(own_issuer);
  mesh_certs_free(own_anchors);
  mesh_ca_free(issuer_ca);
  mesh_ca_free(anchor_ca);
  mesh_ctx_free(ctx);
  return status;
}

/* ---- token ---------------------------------------------------------------- */

static void usage_token(FILE *out) {
  fprintf(out,
          "Mint a token (a compact ES256 JWS) that proves a workload's namespace and\n"
          "service account to the identity service.\n\n"
          "Usage:\n  meshctl identity token --ns NS --sa SA --key DIR/token.key [flags]\n\n"
          "Flags:\n"
          "      --ns NAMESPACE     the workload's namespace\n"
          "      --sa ACCOUNT       the workload's service account\n"
          "      --key FILE         the token signing key (token.key from 'identity init')\n"
          "      --ttl DURATION     how long the token is valid (default 1h)\n"
          "      --audience AUD     who the token is for (default identity.linkerd.cluster.local)\n"
          "  -h, --help             show this help\n\n"
          "Prints the token on a line of its own.\n");
}

static int token_run(int argc, char **argv) {
  enum { OPT_NS = 256, OPT_SA, OPT_KEY, OPT_TTL, OPT_AUD };
  static const struct option opts[] = {
      {"ns", required_argument, NULL, OPT_NS},
      {"sa", required_argument, NULL, OPT_SA},
      {"key", required_argument, NULL, OPT_KEY},
      {"ttl", required_argument, NULL, OPT_TTL},
      {"audience", required_argument, NULL, OPT_AUD},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  const char *prog = argv[0], *ns = NULL, *sa = NULL, *key_file = NULL;
  const char *aud = "identity." MESH_IDENTITY_DEFAULT_CP_NS "." MESH_IDENTITY_DEFAULT_TRUST_DOMAIN;
  uint64_t ttl = 3600;
  int c;
  optind = 0;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    switch (c) {
    case OPT_NS: ns = optarg; break;
    case OPT_SA: sa = optarg; break;
    case OPT_KEY: key_file = optarg; break;
    case OPT_AUD: aud = optarg; break;
    case OPT_TTL:
      if (!parse_duration(optarg, &ttl) || ttl == 0) {
        fprintf(stderr, "%s: invalid --ttl '%s' (a positive duration such as 1h or 10m)\n", prog,
                optarg);
        return meshctl_usage_error(prog);
      }
      break;
    case 'h': usage_token(stdout); return MESHCTL_OK;
    default: return meshctl_usage_error(prog);
    }
  }
  const char *problem = NULL;
  if (optind < argc) {
    fprintf(stderr, "%s: unexpected argument '%s'\n", prog, argv[optind]);
    return meshctl_usage_error(prog);
  }
  if (!ns || !sa || !key_file) problem = "--ns, --sa and --key are required";
  else if (!mesh_dns_label_valid(ns))
    problem = "--ns must be a namespace name (lower-case letters, digits and '-', at most 63)";
  else if (!mesh_dns_label_valid(sa))
    problem = "--sa must be a service account name (lower-case letters, digits and '-', at most 63)";
  else if (!*aud || strlen(aud) > 256) problem = "--audience must be 1 to 256 characters";
  if (problem) {
    fprintf(stderr, "%s: %s\n", prog, problem);
    return meshctl_usage_error(prog);
  }

  int status = MESHCTL_FAILED;
  char *buf = NULL;
  size_t len = 0;
  mesh_key *key = NULL;
  const char *why = NULL;
  mesh_ctx *ctx = meshctl_ctx(prog);
  if (!ctx) return MESHCTL_FAILED;
  if (!meshctl_read(prog, key_file, KEY_MAX_BYTES, &buf, &len)) goto done;
  int rc = mesh_key_parse(ctx, buf, len, &why, &key);
  if (rc < 0) {
    fprintf(stderr, "%s: %s: not a usable private key: %s\n", prog, key_file,
            why ? why : mesh_strerror(rc));
    goto done;
  }
  if (!mesh_key_pem(key)) {
    fprintf(stderr, "%s: %s: holds a public key; tokens are signed with the private key\n", prog,
            key_file);
    goto done;
  }
  uint64_t now = (uint64_t)time(NULL);
  char tok[MESH_TOKEN_MAX_LEN];
  rc = mesh_token_mint(key, ns, sa, aud, now, now + ttl, tok, sizeof tok, NULL);
  if (rc == MESH_ERR_UNSUPPORTED) {
    fprintf(stderr, "%s: %s: tokens are signed with ECDSA P-256 keys, and this is not one\n", prog,
            key_file);
    goto done;
  }
  if (rc < 0) {
    fprintf(stderr, "%s: cannot mint the token: %s\n", prog, mesh_strerror(rc));
    goto done;
  }
  printf("%s\n", tok);
  status = fflush(stdout) == 0 ? MESHCTL_OK : MESHCTL_FAILED;
done:
  if (buf) memset(buf, 0, len);
  free(buf);
  mesh_key_free(key);
  mesh_ctx_free(ctx);
  return status;
}

/* ---- get-issuer ------------------------------------------------------------- */

static void usage_get_issuer(FILE *out) {
  fprintf(out,
          "Show the issuer certificate and whether the trust anchors sign it.\n\n"
          "Usage:\n"
          "  meshctl identity get-issuer --dir DIR [-o text|json]\n"
          "  meshctl identity get-issuer --issuer-certificate-file FILE\n"
          "      [--identity-trust-anchors-file FILE] [-o text|json]\n\n"
          "Flags:\n"
          "      --dir DIR                                the directory of 'identity init': its\n"
          "                                               issuer.crt, checked against its ca.crt\n"
          "      --issuer-certificate-file FILE           another issuer certificate (PEM)\n"
          "      --identity-trust-anchors-file FILE       trust anchors to check it against\n"
          "  -o, --output FORMAT                          text (default) or json\n"
          "  -h, --help                                   show this help\n\n"
          "Exit status: 0 when the issuer is valid now (and signed by the trust anchors,\n"
          "when there are any to check), 1 otherwise, 2 for a usage error.\n");
}

static int get_issuer_run(int argc, char **argv) {
  enum { OPT_DIR = 256, OPT_ISSUER, OPT_ANCHORS };
  static const struct option opts[] = {
      {"dir", required_argument, NULL, OPT_DIR},
      {"issuer-certificate-file", required_argument, NULL, OPT_ISSUER},
      {"identity-issuer-certificate-file", required_argument, NULL, OPT_ISSUER},
      {"identity-trust-anchors-file", required_argument, NULL, OPT_ANCHORS},
      {"output", required_argument, NULL, 'o'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  const char *prog = argv[0], *dir = NULL, *issuer_file = NULL, *anchors_file = NULL;
  bool json = false;
  int c;
  optind = 0;
  while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
    switch (c) {
    case OPT_DIR: dir = optarg; break;
    case OPT_ISSUER: issuer_file = optarg; break;
    case OPT_ANCHORS: anchors_file = optarg; break;
    case 'o':
      if (!meshctl_parse_output(prog, optarg, &json)) return meshctl_usage_error(prog);
      break;
    case 'h': usage_get_issuer(stdout); return MESHCTL_OK;
    default: return meshctl_usage_error(prog);
    }
  }
  if (optind < argc) {
    fprintf(stderr, "%s: unexpected argument '%s'\n", prog, argv[optind]);
    return meshctl_usage_error(prog);
  }
  if (!dir && !issuer_file) {
    fprintf(stderr, "%s: give --dir DIR or --issuer-certificate-file FILE\n", prog);
    return meshctl_usage_error(prog);
  }
  char issuer_path[4096], anchors_path[4096];
  if (!issuer_file) {
    if (!join(prog, issuer_path, sizeof issuer_path, dir, "issuer.crt")) return MESHCTL_FAILED;
    issuer_file = issuer_path;
  }
  if (!anchors_file && dir) {
    if (!join(prog, anchors_path, sizeof anchors_path, dir, "ca.crt")) return MESHCTL_FAILED;
    anchors_file = anchors_path;
  }

  int status = MESHCTL_FAILED;
  mesh_certs *issuer = NULL, *anchors = NULL;
  json_t *root = NULL;
  mesh_ctx *ctx = meshctl_ctx(prog);
  if (!ctx) return MESHCTL_FAILED;
  if (!load_certs(prog, ctx, issuer_file, &issuer)) goto done;
  if (anchors_file && !load_certs(prog, ctx, anchors_file, &anchors)) goto done;

  uint64_t now = (uint64_t)time(NULL);
  uint64_t nbt = mesh_certs_not_before(issuer, 0), nat = mesh_certs_not_after(issuer, 0);
  bool valid_now = now >= nbt && now <= nat, is_ca = mesh_certs_is_ca(issuer, 0) == 1;
  const char *why = NULL;
  int vrc = anchors ? mesh_certs_verify(issuer, anchors, now, &why) : 0;
  if (vrc < 0 && !why) why = mesh_strerror(vrc);
  /* Trust is judged before dates: an expired chain is still a signed one. */
  bool signed_ok = vrc == 0 || vrc == MESH_ERR_EXPIRED;
  char nb[32], na[32];
  rfc3339(nbt, nb);
  rfc3339(nat, na);
  long long days = days_left(nat, now);

  if (json) {
    root = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:I, s:b, s:I, s:b}", "file", issuer_file,
                     "subject", mesh_certs_subject(issuer, 0), "issuer",
                     mesh_certs_issuer(issuer, 0), "serial", mesh_certs_serial(issuer, 0),
                     "notBefore", nb, "notAfter", na, "expiresInDays", (json_int_t)days, "isCA",
                     is_ca, "pathLen", (json_int_t)mesh_certs_pathlen(issuer, 0), "validNow",
                     valid_now);
    if (root) {
      json_object_set_new(root, "trustAnchors", anchors_file ? json_string(anchors_file) : json_null());
      json_object_set_new(root, "signedByTrustAnchors", anchors ? json_boolean(signed_ok) : json_null());
      json_object_set_new(root, "verification", !anchors ? json_null()
                                                : vrc == 0 ? json_string("ok")
                                                           : json_string(why));
    }
    if (!root || json_dumpf(root, stdout, JSON_INDENT(2)) != 0) {
      fprintf(stderr, "%s: cannot write the JSON report\n", prog);
      goto done;
    }
    printf("\n");
  } else {
    printf("Issuer certificate: %s\n", issuer_file);
    printf("  Subject:        %s\n", mesh_certs_subject(issuer, 0));
    printf("  Issuer:         %s\n", mesh_certs_issuer(issuer, 0));
    printf("  Serial:         %s\n", mesh_certs_serial(issuer, 0));
    printf("  Not before:     %s\n", nb);
    printf("  Not after:      %s\n", na);
    if (days >= 0) printf("  Expires in:     %lld days\n", days);
    else printf("  Expires in:     expired %lld days ago\n", -days);
    if (!is_ca) printf("  CA:             no: this certificate cannot issue workload certificates\n");
    if (!anchors) printf("  Trust anchors:  not checked (give --identity-trust-anchors-file)\n");
    else if (vrc == 0) printf("  Trust anchors:  signed by a trust anchor in %s\n", anchors_file);
    else if (signed_ok)
      printf("  Trust anchors:  signed by a trust anchor in %s, but not valid now: %s\n",
             anchors_file, why);
    else printf("  Trust anchors:  NOT signed by a trust anchor in %s: %s\n", anchors_file, why);
  }
  status = valid_now && is_ca && vrc == 0 ? MESHCTL_OK : MESHCTL_FAILED;
  if (fflush(stdout) != 0) status = MESHCTL_FAILED;
done:
  json_decref(root);
  mesh_certs_free(anchors);
  mesh_certs_free(issuer);
  mesh_ctx_free(ctx);
  return status;
}

/* ---- inspect ---------------------------------------------------------------- */

static void usage_inspect(FILE *out) {
  fprintf(out,
          "Show every certificate in a PEM file and, with --anchors, verify the file as a\n"
          "chain (leaf first) against trust anchors.\n\n"
          "Usage:\n  meshctl identity inspect CERT.pem [--anchors ca.crt] [-o text|json]\n\n"
          "Flags:\n"
          "      --anchors FILE       trust anchors (PEM) to verify the chain against\n"
          "  -o, --output FORMAT      text (default) or json\n"
          "  -h, --help               show this help\n\n"
          "Exit status: 0 when the file parses (and, with --anchors, verifies now),\n"
          "1 otherwise, 2 for a usage error.\n");
}

static json_t *cert_json(const mesh_certs *c, size_t i) {
  char nb[32], na[32];
  rfc3339(mesh_certs_not_before(c, i), nb);
  rfc3339(mesh_certs_not_after(c, i), na);
  json_t *sans = json_array();
  for (size_t j = 0; j < mesh_certs_san_count(c, i); j++)
    json_array_append_new(sans, json_pack("{s:s, s:s}", "type", san_kind(mesh_certs_san_type(c, i, j)),
                                          "value", mesh_certs_san_value(c, i, j)));
  json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:s, s:b, s:o}", "subject", mesh_certs_subject(c, i),
                        "issuer", mesh_certs_issuer(c, i), "serial", mesh_certs_serial(c, i),
                        "notBefore", nb, "notAfter", na, "isCA", mesh_certs_is_ca(c, i) == 1,
                        "sans", sans);
  if (!o) return NULL;
  int32_t pl = mesh_certs_pathlen(c, i);
  json_object_set_new(o, "pathLen", pl >= 0 ? json_integer(pl) : json_null());
  mesh_identity *id = NULL;
  const char *why = NULL;
  if (!mesh_certs_is_ca(c, i) && mesh_certs_identity(c, i, &why, &id) == 0) {
    json_object_set_new(o, "identity", json_pack("{s:s, s:s}", "dns", mesh_identity_dns(id),
                                                 "spiffe", mesh_identity_uri(id)));
    mesh_identity_free(id);
  } else {
    json_object_set_new(o, "identity", json_null());
  }
  return o;
}

static void cert_text(const mesh_certs *c, size_t i, const char *file) {
  char nb[32], na[32];
  rfc3339(mesh_certs_not_before(c, i), nb);
  rfc3339(mesh_certs_not_after(c, i), na);
  printf("Certificate %zu of %zu in %s\n", i + 1, mesh_certs_count(c), file);
  printf("  Subject:     %s\n", mesh_certs_subject(c, i));
  printf("  Issuer:      %s\n", mesh_certs_issuer(c, i));
  printf("  Serial:      %s\n", mesh_certs_serial(c, i));
  printf("  Not before:  %s\n", nb);
  printf("  Not after:   %s\n", na);
  int32_t pl = mesh_certs_pathlen(c, i);
  if (!mesh_certs_is_ca(c, i)) printf("  CA:          no\n");
  else if (pl >= 0) printf("  CA:          yes, pathlen %d\n", (int)pl);
  else printf("  CA:          yes, no path length limit\n");
  size_t n = mesh_certs_san_count(c, i);
  printf("  SANs:       %s", n ? "" : " none");
  for (size_t j = 0; j < n; j++)
    printf(" %s:%s%s", san_kind(mesh_certs_san_type(c, i, j)), mesh_certs_san_value(c, i, j),
           j + 1 < n ? "," : "");
  printf("\n");
  if (mesh_certs_is_ca(c, i)) return;
  mesh_identity *id = NULL;
  const char *why = NULL;
  int rc = mesh_certs_identity(c, i, &why, &id);
  if (rc == 0) {
    printf("  Identity:    %s\n", mesh_identity_dns(id));
    printf("               %s\n", mesh_identity_uri(id));
    mesh_identity_free(id);
  } else {
    printf("  Identity:    none: %s\n", why ? why : mesh_strerror(rc));
  }
}

static int inspect_run(int argc, char **argv) {
  enum { OPT_ANCHORS = 256 };
  static const struct option opts[] = {
      {"anchors", required_argument, NULL, OPT_ANCHORS},
      {"output", required_argument, NULL, 'o'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  const char *prog = argv[0], *anchors_file = NULL;
  bool json = false;
  int c;
  optind = 0;
  while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
    switch (c) {
    case OPT_ANCHORS: anchors_file = optarg; break;
    case 'o':
      if (!meshctl_parse_output(prog, optarg, &json)) return meshctl_usage_error(prog);
      break;
    case 'h': usage_inspect(stdout); return MESHCTL_OK;
    default: return meshctl_usage_error(prog);
    }
  }
  if (argc - optind != 1) {
    fprintf(stderr, "%s: expected one certificate FILE, found %d arguments\n", prog, argc - optind);
    return meshctl_usage_error(prog);
  }
  const char *file = argv[optind];

  int status = MESHCTL_FAILED;
  mesh_certs *certs = NULL, *anchors = NULL;
  json_t *root = NULL;
  mesh_ctx *ctx = meshctl_ctx(prog);
  if (!ctx) return MESHCTL_FAILED;
  if (!load_certs(prog, ctx, file, &certs)) goto done;
  if (anchors_file && !load_certs(prog, ctx, anchors_file, &anchors)) goto done;
  const char *why = NULL;
  int vrc = anchors ? mesh_certs_verify(certs, anchors, (uint64_t)time(NULL), &why) : 0;
  if (vrc < 0 && !why) why = mesh_strerror(vrc);
  size_t n = mesh_certs_count(certs);

  if (json) {
    json_t *list = json_array();
    for (size_t i = 0; list && i < n; i++) {
      json_t *o = cert_json(certs, i);
      if (!o || json_array_append_new(list, o) != 0) {
        json_decref(list);
        list = NULL;
      }
    }
    root = list ? json_pack("{s:s, s:o}", "file", file, "certificates", list) : NULL;
    if (root && anchors) {
      json_object_set_new(root, "chain",
                          json_pack("{s:s, s:b, s:s}", "trustAnchors", anchors_file, "verified",
                                    vrc == 0, "reason", vrc == 0 ? "ok" : why));
    }
    if (!root || json_dumpf(root, stdout, JSON_INDENT(2)) != 0) {
      fprintf(stderr, "%s: cannot write the JSON report\n", prog);
      goto done;
    }
    printf("\n");
  } else {
    for (size_t i = 0; i < n; i++) {
      if (i) printf("\n");
      cert_text(certs, i, file);
    }
    if (anchors) {
      if (vrc == 0) printf("\nChain: verified against %s\n", anchors_file);
      else printf("\nChain: NOT verified against %s: %s\n", anchors_file, why);
    }
  }
  status = vrc == 0 && fflush(stdout) == 0 ? MESHCTL_OK : MESHCTL_FAILED;
done:
  json_decref(root);
  mesh_certs_free(anchors);
  mesh_certs_free(certs);
  mesh_ctx_free(ctx);
  return status;
}

/* ---- certify ---------------------------------------------------------------- */

#define CERTIFY_TIMEOUT_MS 15000u

static void usage_certify(FILE *out) {
  fprintf(out,
          "Get a workload certificate from the identity service (mesh-identity), as a\n"
          "proxy does at start: a new key, a CSR and the workload's token, over TLS.\n\n"
          "Usage:\n"
          "  meshctl identity certify --addr HOST:PORT (--dir DIR | --anchors ca.crt)\n"
          "      (--token TOKEN | --token-file FILE) --ns NS --sa SA [--out-dir OUT]\n\n"
          "Flags:\n"
          "      --addr HOST:PORT         the identity service (default 127.0.0.1:8080)\n"
          "      --dir DIR                the directory of 'identity init': its ca.crt and,\n"
          "                               from identity.json, the trust domain and namespace\n"
          "      --anchors FILE           trust anchors (PEM) to check the service and the answer\n"
          "      --identity-trust-domain D  the trust domain (default from --dir, else\n"
          "                               \"cluster.local\")\n"
          "      --cp-namespace NS        the control plane's namespace (default from --dir,\n"
          "                               else \"linkerd\")\n"
          "      --token TOKEN            the workload's token ('meshctl identity token')\n"
          "      --token-file FILE        read the token from FILE (\"-\": standard input)\n"
          "      --ns NAMESPACE           the workload's namespace\n"
          "      --sa ACCOUNT             the workload's service account\n"
          "      --out-dir OUT            write OUT/leaf.crt, OUT/chain.crt (intermediates)\n"
          "                               and OUT/key.pem (mode 0600); otherwise the key\n"
          "                               never leaves memory\n"
          "  -h, --help                   show this help\n\n"
          "The service must present identity.<ns>.serviceaccount.identity.<ns>.<domain>\n"
          "(ns: the control plane's) under the trust anchors. The certificate received is\n"
          "verified against them before anything is written.\n"
          "Exit status: 0 with a certificate, 1 when refused or unreachable, 2 for a usage error.\n");
}

/* trustDomain and controlPlaneNamespace from DIR/identity.json, when present. */
static bool read_identity_json(const char *prog, const char *dir, char *td, size_t td_size,
                               char *ns, size_t ns_size) {
  char path[4096];
  if (!join(prog, path, sizeof path, dir, "identity.json")) return false;
  json_error_t je;
  json_t *c = json_load_file(path, 0, &je);
  if (!c) {
    fprintf(stderr, "%s: %s: %s\n", prog, path, je.text);
    return false;
  }
  const char *t = json_string_value(json_object_get(c, "trustDomain"));
  const char *n = json_string_value(json_object_get(c, "controlPlaneNamespace"));
  if (t) snprintf(td, td_size, "%s", t);
  if (n) snprintf(ns, ns_size, "%s", n);
  json_decref(c);
  return true;
}

/* Prints the service's refusal, from its error body when it has one. */
static void print_refusal(const char *prog, const char *addr, int status, const char *body) {
  json_t *j = body ? json_loads(body, 0, NULL) : NULL;
  json_t *e = json_object_get(j, "error");
  const char *code = json_string_value(json_object_get(e, "code"));
  const char *msg = json_string_value(json_object_get(e, "message"));
  fprintf(stderr, "%s: the identity service at %s refused the request (HTTP %d, %s): %s\n", prog,
          addr, status, code ? code : "no error code", msg && *msg ? msg : "no reason given");
  json_decref(j);
}

static int certify_run(int argc, char **argv) {
  enum { OPT_ADDR = 256, OPT_DIR, OPT_ANCHORS, OPT_TD, OPT_CPNS, OPT_TOKEN, OPT_TOKEN_FILE, OPT_NS,
         OPT_SA, OPT_OUT };
  static const struct option opts[] = {
      {"addr", required_argument, NULL, OPT_ADDR},
      {"dir", required_argument, NULL, OPT_DIR},
      {"anchors", required_argument, NULL, OPT_ANCHORS},
      {"identity-trust-domain", required_argument, NULL, OPT_TD},
      {"cp-namespace", required_argument, NULL, OPT_CPNS},
      {"token", required_argument, NULL, OPT_TOKEN},
      {"token-file", required_argument, NULL, OPT_TOKEN_FILE},
      {"ns", required_argument, NULL, OPT_NS},
      {"sa", required_argument, NULL, OPT_SA},
      {"out-dir", required_argument, NULL, OPT_OUT},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  const char *prog = argv[0], *addr = "127.0.0.1:8080", *dir = NULL, *anchors_file = NULL;
  const char *td_flag = NULL, *cpns_flag = NULL, *token_arg = NULL, *token_file = NULL;
  const char *ns = NULL, *sa = NULL, *out_dir = NULL;
  int c;
  optind = 0;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    switch (c) {
    case OPT_ADDR: addr = optarg; break;
    case OPT_DIR: dir = optarg; break;
    case OPT_ANCHORS: anchors_file = optarg; break;
    case OPT_TD: td_flag = optarg; break;
    case OPT_CPNS: cpns_flag = optarg; break;
    case OPT_TOKEN: token_arg = optarg; break;
    case OPT_TOKEN_FILE: token_file = optarg; break;
    case OPT_NS: ns = optarg; break;
    case OPT_SA: sa = optarg; break;
    case OPT_OUT: out_dir = optarg; break;
    case 'h': usage_certify(stdout); return MESHCTL_OK;
    default: return meshctl_usage_error(prog);
    }
  }
  const char *problem = NULL;
  if (optind < argc) {
    fprintf(stderr, "%s: unexpected argument '%s'\n", prog, argv[optind]);
    return meshctl_usage_error(prog);
  }
  if (!dir && !anchors_file) problem = "give the trust anchors with --dir DIR or --anchors FILE";
  else if (!token_arg == !token_file) problem = "give the token with one of --token or --token-file";
  else if (!ns || !sa) problem = "--ns and --sa are required";
  else if (!mesh_dns_label_valid(ns))
    problem = "--ns must be a namespace name (lower-case letters, digits and '-', at most 63)";
  else if (!mesh_dns_label_valid(sa))
    problem = "--sa must be a service account name (lower-case letters, digits and '-', at most 63)";
  if (problem) {
    fprintf(stderr, "%s: %s\n", prog, problem);
    return meshctl_usage_error(prog);
  }
  char td[254] = MESH_IDENTITY_DEFAULT_TRUST_DOMAIN, cp_ns[64] = MESH_IDENTITY_DEFAULT_CP_NS;
  char anchors_path[4096];
  if (dir) {
    if (!read_identity_json(prog, dir, td, sizeof td, cp_ns, sizeof cp_ns)) return MESHCTL_FAILED;
    if (!anchors_file) {
      if (!join(prog, anchors_path, sizeof anchors_path, dir, "ca.crt")) return MESHCTL_FAILED;
      anchors_file = anchors_path;
    }
  }
  if (td_flag) snprintf(td, sizeof td, "%s", td_flag);
  if (cpns_flag) snprintf(cp_ns, sizeof cp_ns, "%s", cpns_flag);

  int status = MESHCTL_FAILED, rc;
  char *anchors_pem = NULL, *token = NULL, *request = NULL, *response = NULL;
  size_t anchors_len = 0, token_len = 0;
  mesh_certs *anchors = NULL, *chain = NULL;
  mesh_key *key = NULL;
  mesh_identity *id = NULL, *server = NULL, *got = NULL;
  mesh_tls_opts *topts = NULL;
  mesh_tls_config *tls = NULL;
  const char *why = NULL;
  mesh_ctx *ctx = meshctl_ctx(prog);
  if (!ctx) return MESHCTL_FAILED;
  if (!meshctl_read(prog, anchors_file, MESH_CERTS_MAX_BYTES, &anchors_pem, &anchors_len)) goto done;
  if ((rc = mesh_certs_parse(ctx, anchors_pem, anchors_len, &why, &anchors)) < 0) {
    fprintf(stderr, "%s: %s: not a PEM certificate file: %s\n", prog, anchors_file,
            why ? why : mesh_strerror(rc));
    goto done;
  }
  if (token_file) {
    if (!meshctl_read(prog, token_file, MESH_TOKEN_MAX_LEN, &token, &token_len)) goto done;
  } else if (!(token = strdup(token_arg))) {
    fprintf(stderr, "%s: out of memory\n", prog);
    goto done;
  }
  /* A token file written by `meshctl identity token > F` ends with a newline. */
  token_len = strlen(token);
  while (token_len && (token[token_len - 1] == '\n' || token[token_len - 1] == '\r' ||
                       token[token_len - 1] == ' '))
    token[--token_len] = '\0';

  if ((rc = mesh_identity_new(ctx, ns, sa, cp_ns, td, &why, &id)) < 0 ||
      (rc = mesh_identity_new(ctx, cp_ns, "identity", cp_ns, td, &why, &server)) < 0) {
    fprintf(stderr, "%s: trust domain '%s' or namespace '%s' is not a valid name: %s\n", prog, td,
            cp_ns, why ? why : mesh_strerror(rc));
    goto done;
  }
  if ((rc = mesh_key_generate(ctx, &key)) < 0) {
    fprintf(stderr, "%s: cannot generate a key: %s\n", prog, mesh_strerror(rc));
    goto done;
  }
  rc = mesh_certify_request(key, id, token, &request);
  if (rc == MESH_ERR_PARSE || rc == MESH_ERR_LIMIT) {
    fprintf(stderr, "%s: the token is not a JWS (base64url segments joined by dots, at most %u bytes)\n",
            prog, MESH_TOKEN_MAX_LEN);
    goto done;
  }
  if (rc < 0) {
    fprintf(stderr, "%s: cannot make the request: %s\n", prog, mesh_strerror(rc));
    goto done;
  }
  /* No certificate yet: a client-only TLS configuration, which still
   * checks the service's certificate against the anchors. */
  if ((rc = mesh_tls_opts_new(ctx, &topts)) < 0 ||
      (rc = mesh_tls_opts_set_anchors(topts, anchors_pem, anchors_len)) < 0 ||
      (rc = mesh_tls_opts_set_alpn(topts, "h2")) < 0 ||
      (rc = mesh_tls_config_new(topts, &why, &tls)) < 0) {
    fprintf(stderr, "%s: cannot set up TLS with %s: %s\n", prog, anchors_file,
            why ? why : mesh_strerror(rc));
    goto done;
  }
  int http_status = 0;
  why = NULL;
  rc = mesh_rpc_call_sync(ctx, tls, addr, mesh_identity_dns(server), MESH_CERTIFY_PATH, request,
                          strlen(request), CERTIFY_TIMEOUT_MS, &http_status, &response, &why);
  if (rc < 0) {
    fprintf(stderr, "%s: cannot reach the identity service at %s as %s: %s\n", prog, addr,
            mesh_identity_dns(server), why ? why : mesh_strerror(rc));
    goto done;
  }
  if (http_status != 200) {
    print_refusal(prog, addr, http_status, response);
    goto done;
  }
  uint64_t valid_until = 0, now = (uint64_t)time(NULL);
  if ((rc = mesh_certify_response_parse(ctx, response, strlen(response), &chain, &valid_until,
                                        &why)) < 0) {
    fprintf(stderr, "%s: the identity service's answer is malformed: %s\n", prog,
            why ? why : mesh_strerror(rc));
    goto done;
  }
  if ((rc = mesh_certs_verify_peer(chain, anchors, now, id, &why, &got)) < 0) {
    fprintf(stderr, "%s: the certificate received does not verify against %s: %s\n", prog,
            anchors_file, why ? why : mesh_strerror(rc));
    goto done;
  }
  if (out_dir) {
    if (mkdir(out_dir, 0755) != 0 && errno != EEXIST) {
      fprintf(stderr, "%s: %s: %s\n", prog, out_dir, strerror(errno));
      goto done;
    }
    const char *inter = mesh_certs_count(chain) > 1 ? mesh_certs_bundle_pem(chain, 1) : "";
    if (!write_file(prog, out_dir, "key.pem", mesh_key_pem(key), 0600) ||
        !write_file(prog, out_dir, "leaf.crt", mesh_certs_pem(chain, 0), 0644) ||
        !write_file(prog, out_dir, "chain.crt", inter, 0644))
      goto done;
  }
  char nb[32], na[32];
  rfc3339(mesh_certs_not_before(chain, 0), nb);
  rfc3339(valid_until, na);
  printf("Certified %s\n", mesh_identity_dns(got));
  printf("  SPIFFE ID:   %s\n", mesh_identity_uri(got));
  printf("  Issuer:      %s\n", mesh_certs_issuer(chain, 0));
  printf("  Serial:      %s\n", mesh_certs_serial(chain, 0));
  printf("  Valid:       %s to %s\n", nb, na);
  printf("  Chain:       verified against %s\n", anchors_file);
  if (out_dir)
    printf("  Written:     %s/leaf.crt, %s/chain.crt, %s/key.pem (mode 0600)\n", out_dir, out_dir,
           out_dir);
  status = fflush(stdout) == 0 ? MESHCTL_OK : MESHCTL_FAILED;
done:
  if (token) memset(token, 0, strlen(token));
  free(token);
  free(anchors_pem);
  mesh_free_string(ctx, request);
  mesh_free_string(ctx, response);
  mesh_tls_config_unref(tls);
  mesh_tls_opts_free(topts);
  mesh_identity_free(got);
  mesh_identity_free(server);
  mesh_identity_free(id);
  mesh_key_free(key);
  mesh_certs_free(chain);
  mesh_certs_free(anchors);
  mesh_ctx_free(ctx);
  return status;
}

/* ---- Dispatch ----------------------------------------------------------------- */

static const struct {
  const char *name;
  int (*run)(int argc, char **argv);
} subcommands[] = {
    {"init", init_run},
    {"token", token_run},
    {"get-issuer", get_issuer_run},
    {"inspect", inspect_run},
    {"certify", certify_run},
};

static int run(int argc, char **argv) {
  const char *prog = argv[0];
  if (argc < 2) {
    fprintf(stderr, "%s: give a subcommand: init, token, get-issuer, inspect or certify\n\n", prog);
    usage(stderr);
    return MESHCTL_USAGE;
  }
  const char *name = argv[1];
  if (!strcmp(name, "-h") || !strcmp(name, "--help") || !strcmp(name, "help")) {
    usage(stdout);
    return MESHCTL_OK;
  }
  for (size_t i = 0; i < sizeof subcommands / sizeof subcommands[0]; i++) {
    if (strcmp(subcommands[i].name, name) != 0) continue;
    /* As main.c does: the subcommand sees its full name as argv[0]. */
    char sub[96];
    snprintf(sub, sizeof sub, "%s %s", prog, name);
    argv[1] = sub;
    return subcommands[i].run(argc - 1, argv + 1);
  }
  fprintf(stderr, "%s: unknown subcommand '%s'\n\n", prog, name);
  usage(stderr);
  return MESHCTL_USAGE;
}

const meshctl_command meshctl_cmd_identity = {
    .name = "identity",
    .summary = "set up trust anchors, issuer and token key; mint tokens; get and inspect certificates",
    .run = run,
    .usage = usage,
};
