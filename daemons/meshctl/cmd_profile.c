/* meshctl profile: print a ServiceProfile, as a commented template or generated from OpenAPI. */
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "meshctl.h"

static void usage(FILE *out) {
  fprintf(out,
          "Print a ServiceProfile for a service, as `linkerd profile` does.\n\n"
          "Usage:\n"
          "  meshctl profile --template NAME [-n NAMESPACE]\n"
          "  meshctl profile --open-api SPEC NAME [-n NAMESPACE]\n\n"
          "Flags:\n"
          "      --template              a commented template to edit\n"
          "      --open-api SPEC         a route per operation of an OpenAPI 2 or 3 spec (JSON or\n"
          "                              YAML; '-' reads standard input)\n"
          "  -n, --namespace NAMESPACE   the service's namespace (default \"default\")\n"
          "      --cluster-domain DOMAIN the cluster's DNS domain (default \"cluster.local\")\n"
          "  -h, --help                  show this help\n\n"
          "The profile is named NAME.NAMESPACE.svc.DOMAIN, the name the proxy looks it up by.\n");
}

/* The shape of Linkerd's `linkerd profile --template`: one route with every
 * field shown, and the rest of the schema in comments. @NAME@, @NS@ and
 * @DOMAIN@ stand for the service, its namespace and the cluster domain. */
static const char template_text[] =
    "### ServiceProfile for @NAME@.@NS@ ###\n"
    "apiVersion: linkerd.io/v1alpha2\n"
    "kind: ServiceProfile\n"
    "metadata:\n"
    "  name: @NAME@.@NS@.svc.@DOMAIN@\n"
    "  namespace: @NS@\n"
    "spec:\n"
    "  # Routes group requests so that metrics (request volume, success rate,\n"
    "  # latency) are reported per route, and say how each route is handled.\n"
    "  routes:\n"
    "  - name: '/authors/{id}'\n"
    "\n"
    "    # A request belongs to the first route whose condition it matches.\n"
    "    condition:\n"
    "      # pathRegex must match the whole path (it is anchored at both ends).\n"
    "      pathRegex: '/authors/\\d+'\n"
    "\n"
    "      # The request's method.\n"
    "      method: POST\n"
    "\n"
    "      # Fields set side by side must all match; this is the same as:\n"
    "      # all:\n"
    "      # - pathRegex: '/authors/\\d+'\n"
    "      # - method: POST\n"
    "\n"
    "      # 'all', 'any' and 'not' combine conditions:\n"
    "      # any:\n"
    "      # - all:\n"
    "      #   - method: POST\n"
    "      #   - pathRegex: '/authors/\\d+'\n"
    "      # - all:\n"
    "      #   - not:\n"
    "      #       method: DELETE\n"
    "      #   - pathRegex: /info.txt\n"
    "\n"
    "    # A retryable route is safe to send again: failed requests are retried\n"
    "    # while the retry budget allows.\n"
    "    # isRetryable: true\n"
    "\n"
    "    # Response classes decide which responses count as failures. The first\n"
    "    # class that matches decides; without one, 5xx responses are failures.\n"
    "    responseClasses:\n"
    "    - condition:\n"
    "        # A range of HTTP status codes.\n"
    "        status:\n"
    "          min: 500\n"
    "          max: 599\n"
    "\n"
    "        # With only min (or only max), a single code matches.\n"
    "        # status:\n"
    "        #   min: 404\n"
    "\n"
    "        # 'all', 'any' and 'not' combine these conditions too:\n"
    "        # all:\n"
    "        # - status:\n"
    "        #     min: 500\n"
    "        #     max: 599\n"
    "        # - not:\n"
    "        #     status:\n"
    "        #       min: 503\n"
    "\n"
    "      # Whether responses of this class are failures.\n"
    "      isFailure: true\n"
    "\n"
    "    # Requests to this route that take longer are cancelled (default 10s).\n"
    "    # timeout: 250ms\n"
    "\n"
    "  # The retry budget bounds retries to this service, so that retries cannot\n"
    "  # multiply the load on a service that is already failing.\n"
    "  # retryBudget:\n"
    "  #   Retries may add at most this ratio to the original requests\n"
    "  #   (0.2: at most 20% more).\n"
    "  #   retryRatio: 0.2\n"
    "  #\n"
    "  #   Retries allowed per second on top of the ratio, so that a service\n"
    "  #   with little traffic can still retry.\n"
    "  #   minRetriesPerSecond: 10\n"
    "  #\n"
    "  #   The window over which the ratio is computed: longer allows burstier\n"
    "  #   retries.\n"
    "  #   ttl: 10s\n";

static int print_template(const char *name, const char *ns, const char *domain) {
  static const char *const keys[] = {"@NAME@", "@NS@", "@DOMAIN@"};
  const char *values[] = {name, ns, domain};
  for (const char *s = template_text; *s;) {
    size_t k = 0;
    while (k < 3 && strncmp(s, keys[k], strlen(keys[k])) != 0) k++;
    if (k < 3) {
      fputs(values[k], stdout);
      s += strlen(keys[k]);
    } else {
      putchar(*s++);
    }
  }
  return fflush(stdout) == 0 ? MESHCTL_OK : MESHCTL_FAILED;
}

static int print_openapi(const char *prog, const char *spec, const char *name, const char *ns,
                         const char *domain) {
  char *buf = NULL, *fqdn = NULL, *yaml = NULL;
  size_t len = 0;
  mesh_diags *diags = NULL;
  int status = MESHCTL_FAILED;
  mesh_ctx *ctx = meshctl_ctx(prog);
  if (!ctx) return MESHCTL_FAILED;
  if (!meshctl_read(prog, spec, MESH_MANIFEST_MAX_BYTES, &buf, &len)) goto done;
  size_t n = strlen(name) + strlen(ns) + strlen(domain) + 8;
  fqdn = malloc(n);
  int rc = fqdn ? mesh_diags_new(ctx, &diags) : MESH_ERR_NOMEM;
  if (rc == 0) {
    snprintf(fqdn, n, "%s.%s.svc.%s", name, ns, domain);
    rc = mesh_profile_from_openapi(ctx, strcmp(spec, "-") == 0 ? "<stdin>" : spec, buf, len, fqdn,
                                   ns, diags, &yaml);
  }
  meshctl_print_diags(stderr, diags);
  if (rc < 0) {
    if (mesh_diags_errors(diags) == 0) fprintf(stderr, "%s: %s\n", prog, mesh_strerror(rc));
    goto done;
  }
  fputs(yaml, stdout);
  status = fflush(stdout) == 0 ? MESHCTL_OK : MESHCTL_FAILED;
done:
  mesh_free_string(ctx, yaml);
  mesh_diags_free(diags);
  free(fqdn);
  free(buf);
  mesh_ctx_free(ctx);
  return status;
}

static int run(int argc, char **argv) {
  enum { OPT_TEMPLATE = 256, OPT_OPENAPI, OPT_DOMAIN };
  static const struct option opts[] = {
      {"template", no_argument, NULL, OPT_TEMPLATE},
      {"open-api", required_argument, NULL, OPT_OPENAPI},
      {"namespace", required_argument, NULL, 'n'},
      {"cluster-domain", required_argument, NULL, OPT_DOMAIN},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  const char *prog = argv[0], *spec = NULL, *ns = "default", *domain = "cluster.local";
  bool template = false;
  int c;
  optind = 0;
  while ((c = getopt_long(argc, argv, "n:h", opts, NULL)) != -1) {
    switch (c) {
    case OPT_TEMPLATE: template = true; break;
    case OPT_OPENAPI: spec = optarg; break;
    case 'n': ns = optarg; break;
    case OPT_DOMAIN: domain = optarg; break;
    case 'h': usage(stdout); return MESHCTL_OK;
    default: return meshctl_usage_error(prog);
    }
  }
  if (template == (spec != NULL)) {
    fprintf(stderr, "%s: give exactly one of --template or --open-api SPEC\n", prog);
    return meshctl_usage_error(prog);
  }
  if (argc - optind != 1) {
    fprintf(stderr, "%s: expected one service NAME, found %d arguments\n", prog, argc - optind);
    return meshctl_usage_error(prog);
  }
  const char *name = argv[optind];
  /* The names become a DNS name the proxy looks the profile up by. */
  const char *bad = NULL, *what = NULL, *rule = "lower-case letters, digits and '-', at most 63";
  if (!mesh_dns_label_valid(name)) bad = name, what = "service name";
  else if (!mesh_dns_label_valid(ns)) bad = ns, what = "namespace";
  else if (!mesh_dns_name_valid(domain))
    bad = domain, what = "cluster domain", rule = "lower-case letters, digits, '-' and '.'";
  if (bad) {
    fprintf(stderr, "%s: '%s' is not a valid %s (%s)\n", prog, bad, what, rule);
    return meshctl_usage_error(prog);
  }
  if (template) return print_template(name, ns, domain);
  return print_openapi(prog, spec, name, ns, domain);
}

const meshctl_command meshctl_cmd_profile = {
    .name = "profile",
    .summary = "print a ServiceProfile: a template, or one generated from an OpenAPI spec",
    .run = run,
    .usage = usage,
};
