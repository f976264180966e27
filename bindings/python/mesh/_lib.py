"""Finds libmesh.so and declares the C prototypes of its public API.

Every function is declared here with argtypes and restype, so that a wrong
argument is a Python TypeError rather than a corrupted stack, and so that
pointers are never truncated to a C int. Handles are typed pointers to
distinct opaque structures: passing a split where a profile is expected is
refused by ctypes.
"""

import ctypes
import ctypes.util
import os
from ctypes import (CFUNCTYPE, POINTER, Structure, c_char_p, c_double, c_int, c_int32,
                    c_int64, c_size_t, c_uint8, c_uint16, c_uint32, c_uint64, c_void_p)

__all__ = ["lib", "path"]

SONAME = "libmesh.so.0"


class _Opaque(Structure):
    """Base for the opaque C structures: only pointers to them are used."""


class mesh_ctx(_Opaque):
    pass


class mesh_diags(_Opaque):
    pass


class mesh_manifest(_Opaque):
    pass


class mesh_profile(_Opaque):
    pass


class mesh_route(_Opaque):
    pass


class mesh_split(_Opaque):
    pass


class mesh_budget(_Opaque):
    pass


class mesh_balance(_Opaque):
    pass


class mesh_balance_opts(_Opaque):
    pass


class mesh_endpoint(_Opaque):
    pass


class mesh_identity(_Opaque):
    pass


class mesh_key(_Opaque):
    pass


class mesh_csr(_Opaque):
    pass


class mesh_certs(_Opaque):
    pass


class mesh_ca(_Opaque):
    pass


class mesh_metrics(_Opaque):
    pass


class mesh_metric_family(_Opaque):
    pass


class mesh_metric_series(_Opaque):
    pass


class mesh_policy(_Opaque):
    pass


class mesh_policy_opts(_Opaque):
    pass


# The plain structs of mesh/policy.h, field for field.
class mesh_policy_label(Structure):
    _fields_ = [("name", c_char_p), ("value", c_char_p)]


class mesh_policy_workload(Structure):
    _fields_ = [("ns", c_char_p), ("labels", POINTER(mesh_policy_label)), ("nlabels", c_size_t),
                ("port", c_uint32), ("port_name", c_char_p), ("default_policy", c_int32)]


class mesh_policy_header(Structure):
    _fields_ = [("name", c_char_p), ("name_len", c_size_t), ("value", c_char_p),
                ("value_len", c_size_t)]


class mesh_policy_request(Structure):
    _fields_ = [("client_id", c_char_p), ("tls", c_uint32), ("addr_family", c_uint32),
                ("addr", c_uint8 * 16), ("sockaddr", c_void_p), ("method", c_char_p),
                ("path", c_char_p), ("path_len", c_size_t), ("query", c_char_p),
                ("query_len", c_size_t), ("headers", POINTER(mesh_policy_header)),
                ("nheaders", c_size_t)]


class mesh_policy_result(Structure):
    _fields_ = [("decision", c_int32), ("audit", c_int32), ("protocol", c_int32),
                ("default_policy", c_int32), ("server_kind", c_char_p), ("server_name", c_char_p),
                ("server_ns", c_char_p), ("route_kind", c_char_p), ("route_name", c_char_p),
                ("route_rule", c_int32), ("authz_kind", c_char_p), ("authz_name", c_char_p)]


class mesh_policy_authz(_Opaque):
    pass


class mesh_policy_server_info(Structure):
    _fields_ = [("name", c_char_p), ("ns", c_char_p), ("port", c_uint32), ("port_name", c_char_p),
                ("protocol", c_int32), ("access_policy", c_int32), ("nroutes", c_size_t),
                ("nauthz", c_size_t)]


class mesh_policy_route_info(Structure):
    _fields_ = [("name", c_char_p), ("ns", c_char_p), ("nrules", c_size_t), ("nauthz", c_size_t)]


class mesh_policy_authz_info(Structure):
    _fields_ = [("kind", c_char_p), ("name", c_char_p), ("never", c_int32), ("nclauses", c_size_t)]


class mesh_policy_clause_info(Structure):
    _fields_ = [("authn", c_int32), ("nidentities", c_size_t), ("nnetworks", c_size_t)]


ctx_p = POINTER(mesh_ctx)
policy_p = POINTER(mesh_policy)
authz_p = POINTER(mesh_policy_authz)
policy_opts_p = POINTER(mesh_policy_opts)
diags_p = POINTER(mesh_diags)
manifest_p = POINTER(mesh_manifest)
profile_p = POINTER(mesh_profile)
route_p = POINTER(mesh_route)
split_p = POINTER(mesh_split)
budget_p = POINTER(mesh_budget)
balance_p = POINTER(mesh_balance)
balance_opts_p = POINTER(mesh_balance_opts)
endpoint_p = POINTER(mesh_endpoint)
identity_p = POINTER(mesh_identity)
key_p = POINTER(mesh_key)
csr_p = POINTER(mesh_csr)
certs_p = POINTER(mesh_certs)
ca_p = POINTER(mesh_ca)
metrics_p = POINTER(mesh_metrics)
family_p = POINTER(mesh_metric_family)
series_p = POINTER(mesh_metric_series)
# The static reason strings of identity.h's `const char **why`.
why_p = POINTER(c_char_p)

# size_t (size_t)-1, as mesh_split_pick returns for an unsealed split.
SIZE_MAX = (1 << (8 * ctypes.sizeof(c_size_t))) - 1

# Callback types (mesh/ctx.h). The log hook receives the line as char *.
LOG_FN = CFUNCTYPE(None, c_void_p, c_int, c_char_p)
RANDOM_FN = CFUNCTYPE(c_int, c_void_p, POINTER(c_uint8), c_size_t)

# name: (restype, [argtypes]). The whole public API of mesh/*.h, except tls.h
# (not bound yet; tests/test_mesh.py lists what is left out and why).
_PROTOTYPES = {
    # error.h
    "mesh_strerror": (c_char_p, [c_int]),
    "mesh_version_num": (c_uint32, []),
    "mesh_version_string": (c_char_p, []),
    # ctx.h (the allocator variant is not bound: Python has no use for it)
    "mesh_ctx_new": (c_int, [POINTER(ctx_p)]),
    "mesh_ctx_free": (None, [ctx_p]),
    "mesh_ctx_set_log": (c_int, [ctx_p, c_int, LOG_FN, c_void_p]),
    "mesh_ctx_set_random": (c_int, [ctx_p, RANDOM_FN, c_void_p]),
    "mesh_ctx_random": (c_int, [ctx_p, POINTER(c_uint8), c_size_t]),
    # diag.h
    "mesh_diags_new": (c_int, [ctx_p, POINTER(diags_p)]),
    "mesh_diags_free": (None, [diags_p]),
    "mesh_diags_clear": (None, [diags_p]),
    "mesh_diags_count": (c_size_t, [diags_p]),
    "mesh_diags_errors": (c_size_t, [diags_p]),
    "mesh_diags_severity": (c_int, [diags_p, c_size_t]),
    "mesh_diags_file": (c_char_p, [diags_p, c_size_t]),
    "mesh_diags_line": (c_uint32, [diags_p, c_size_t]),
    "mesh_diags_column": (c_uint32, [diags_p, c_size_t]),
    "mesh_diags_message": (c_char_p, [diags_p, c_size_t]),
    "mesh_diags_text": (c_char_p, [diags_p, c_size_t]),
    # manifest.h
    "mesh_manifest_load_buffer": (c_int, [ctx_p, c_char_p, c_char_p, c_size_t, diags_p,
                                          POINTER(manifest_p)]),
    "mesh_manifest_load_file": (c_int, [ctx_p, c_char_p, diags_p, POINTER(manifest_p)]),
    "mesh_manifest_free": (None, [manifest_p]),
    "mesh_manifest_count": (c_size_t, [manifest_p]),
    "mesh_manifest_kind": (c_int, [manifest_p, c_size_t]),
    "mesh_manifest_kind_name": (c_char_p, [manifest_p, c_size_t]),
    "mesh_manifest_api_version": (c_char_p, [manifest_p, c_size_t]),
    "mesh_manifest_name": (c_char_p, [manifest_p, c_size_t]),
    "mesh_manifest_namespace": (c_char_p, [manifest_p, c_size_t]),
    "mesh_manifest_line": (c_uint32, [manifest_p, c_size_t]),
    "mesh_manifest_profile": (profile_p, [manifest_p, c_size_t]),
    "mesh_manifest_split": (split_p, [manifest_p, c_size_t]),
    "mesh_manifest_file_name": (c_int, [c_char_p]),
    "mesh_dns_label_valid": (c_int, [c_char_p]),
    "mesh_dns_name_valid": (c_int, [c_char_p]),
    "mesh_duration_parse_s": (c_int, [c_char_p, POINTER(c_uint64), POINTER(c_char_p)]),
    # policy.h
    "mesh_policy_opts_new": (c_int, [ctx_p, POINTER(policy_opts_p)]),
    "mesh_policy_opts_free": (None, [policy_opts_p]),
    "mesh_policy_opts_set_default": (c_int, [policy_opts_p, c_int32]),
    "mesh_policy_opts_set_cluster_networks": (c_int, [policy_opts_p, c_char_p, POINTER(c_char_p)]),
    "mesh_policy_opts_set_identity_domain": (c_int, [policy_opts_p, c_char_p, c_char_p]),
    "mesh_policy_opts_set_allow_localhost": (c_int, [policy_opts_p, c_int32]),
    "mesh_policy_default_name": (c_char_p, [c_int32]),
    "mesh_policy_default_parse": (c_int, [c_char_p]),
    "mesh_policy_compile": (c_int, [ctx_p, POINTER(manifest_p), c_size_t, policy_opts_p, diags_p,
                                    POINTER(policy_p)]),
    "mesh_policy_ref": (policy_p, [policy_p]),
    "mesh_policy_unref": (None, [policy_p]),
    "mesh_policy_server_count": (c_size_t, [policy_p]),
    "mesh_policy_authorization_count": (c_size_t, [policy_p]),
    "mesh_policy_route_count": (c_size_t, [policy_p]),
    "mesh_policy_decide": (c_int, [policy_p, POINTER(mesh_policy_workload),
                                   POINTER(mesh_policy_request), POINTER(mesh_policy_result)]),
    "mesh_policy_compile_message": (c_int, [ctx_p, c_char_p, c_size_t, policy_opts_p, diags_p,
                                            POINTER(policy_p)]),
    "mesh_policy_server_describe": (c_int, [policy_p, c_size_t, POINTER(mesh_policy_server_info)]),
    "mesh_policy_server_selects": (c_int, [policy_p, c_size_t, POINTER(mesh_policy_workload)]),
    "mesh_policy_server_find": (c_int, [policy_p, POINTER(mesh_policy_workload),
                                        POINTER(c_size_t)]),
    "mesh_policy_route_describe": (c_int, [policy_p, c_size_t, c_size_t,
                                           POINTER(mesh_policy_route_info)]),
    "mesh_policy_server_authz": (authz_p, [policy_p, c_size_t, c_size_t]),
    "mesh_policy_route_authz": (authz_p, [policy_p, c_size_t, c_size_t, c_size_t]),
    "mesh_policy_default": (c_int32, [policy_p]),
    "mesh_policy_default_authz": (authz_p, [policy_p, c_int32]),
    "mesh_policy_authz_describe": (c_int, [authz_p, POINTER(mesh_policy_authz_info)]),
    "mesh_policy_authz_clause": (c_int, [authz_p, c_size_t, POINTER(mesh_policy_clause_info)]),
    "mesh_policy_authz_identity": (c_int, [authz_p, c_size_t, c_size_t, c_char_p, c_size_t]),
    "mesh_policy_authz_network": (c_int, [authz_p, c_size_t, c_size_t, c_size_t, c_char_p,
                                          c_size_t]),
    # profile.h
    "mesh_profile_parse": (c_int, [ctx_p, c_char_p, c_char_p, c_size_t, diags_p,
                                   POINTER(profile_p)]),
    "mesh_profile_ref": (profile_p, [profile_p]),
    "mesh_profile_unref": (None, [profile_p]),
    "mesh_profile_name": (c_char_p, [profile_p]),
    "mesh_profile_namespace": (c_char_p, [profile_p]),
    "mesh_profile_route_count": (c_size_t, [profile_p]),
    "mesh_profile_route": (route_p, [profile_p, c_size_t]),
    "mesh_profile_match": (route_p, [profile_p, c_char_p, c_char_p, c_size_t]),
    "mesh_route_name": (c_char_p, [route_p]),
    "mesh_route_timeout_ms": (c_uint64, [route_p]),
    "mesh_route_is_retryable": (c_int, [route_p]),
    "mesh_route_index": (c_size_t, [route_p]),
    "mesh_route_classify": (c_int, [route_p, c_uint32, c_int32]),
    "mesh_route_retry_budget": (c_int, [route_p, POINTER(c_double), POINTER(c_uint32),
                                        POINTER(c_uint64)]),
    "mesh_profile_retry_budget": (None, [profile_p, POINTER(c_double), POINTER(c_uint32),
                                         POINTER(c_uint64)]),
    "mesh_profile_dst_overrides": (split_p, [profile_p]),
    "mesh_profile_opaque_port_count": (c_size_t, [profile_p]),
    "mesh_profile_opaque_port": (c_uint16, [profile_p, c_size_t]),
    "mesh_profile_with_split": (c_int, [ctx_p, profile_p, split_p, c_char_p, c_uint16,
                                        POINTER(profile_p)]),
    # The result is a char * that we must free: c_void_p keeps the address
    # (c_char_p would copy it into bytes and lose the pointer).
    "mesh_profile_from_openapi": (c_int, [ctx_p, c_char_p, c_char_p, c_size_t, c_char_p,
                                          c_char_p, diags_p, POINTER(c_void_p)]),
    "mesh_free_string": (None, [ctx_p, c_void_p]),
    # split.h
    "mesh_split_parse": (c_int, [ctx_p, c_char_p, c_char_p, c_size_t, diags_p,
                                 POINTER(split_p)]),
    "mesh_split_new": (c_int, [ctx_p, c_char_p, c_char_p, POINTER(split_p)]),
    "mesh_split_add": (c_int, [split_p, c_char_p, c_uint64]),
    "mesh_split_seal": (c_int, [split_p]),
    "mesh_split_ref": (split_p, [split_p]),
    "mesh_split_unref": (None, [split_p]),
    "mesh_split_service": (c_char_p, [split_p]),
    "mesh_split_namespace": (c_char_p, [split_p]),
    "mesh_split_count": (c_size_t, [split_p]),
    "mesh_split_backend": (c_char_p, [split_p, c_size_t]),
    "mesh_split_weight_milli": (c_uint64, [split_p, c_size_t]),
    "mesh_split_weight": (c_uint32, [split_p, c_size_t]),
    "mesh_split_pick": (c_size_t, [split_p, c_uint32]),
    # retry.h
    "mesh_budget_new": (c_int, [ctx_p, c_double, c_uint32, c_uint64, c_uint64,
                                POINTER(budget_p)]),
    "mesh_budget_free": (None, [budget_p]),
    "mesh_budget_deposit": (None, [budget_p, c_uint64]),
    "mesh_budget_withdraw": (c_int, [budget_p, c_uint64]),
    "mesh_budget_balance": (c_int64, [budget_p, c_uint64]),
    "mesh_backoff_ms": (c_uint64, [c_uint64, c_uint64, c_uint32, c_uint32]),
    # balance.h
    "mesh_balance_opts_new": (c_int, [ctx_p, POINTER(balance_opts_p)]),
    "mesh_balance_opts_free": (None, [balance_opts_p]),
    "mesh_balance_opts_set_decay": (c_int, [balance_opts_p, c_uint64]),
    "mesh_balance_opts_set_default_rtt": (c_int, [balance_opts_p, c_uint64]),
    "mesh_balance_opts_set_failure_threshold": (c_int, [balance_opts_p, c_uint32]),
    "mesh_balance_opts_set_penalty": (c_int, [balance_opts_p, c_uint64, c_uint64]),
    "mesh_balance_opts_set_jitter": (c_int, [balance_opts_p, c_double]),
    "mesh_balance_new": (c_int, [ctx_p, balance_opts_p, POINTER(balance_p)]),
    "mesh_balance_free": (None, [balance_p]),
    "mesh_balance_add": (c_int, [balance_p, c_char_p, c_uint32, c_void_p, POINTER(endpoint_p)]),
    "mesh_balance_remove": (c_int, [balance_p, endpoint_p]),
    "mesh_balance_count": (c_size_t, [balance_p]),
    "mesh_balance_ready_count": (c_size_t, [balance_p]),
    "mesh_balance_next_ready_ns": (c_uint64, [balance_p]),
    "mesh_balance_endpoint": (endpoint_p, [balance_p, c_size_t]),
    "mesh_balance_pick": (c_int, [balance_p, c_uint64, c_uint32, c_uint32, POINTER(endpoint_p)]),
    "mesh_balance_done": (None, [endpoint_p, c_uint64, c_uint64, c_int, c_uint32]),
    "mesh_endpoint_ref": (endpoint_p, [endpoint_p]),
    "mesh_endpoint_unref": (None, [endpoint_p]),
    "mesh_endpoint_addr": (c_char_p, [endpoint_p]),
    "mesh_endpoint_userdata": (c_void_p, [endpoint_p]),
    "mesh_endpoint_weight": (c_uint32, [endpoint_p]),
    "mesh_endpoint_active": (c_int, [endpoint_p]),
    "mesh_endpoint_state": (c_int, [endpoint_p]),
    "mesh_endpoint_pending": (c_uint32, [endpoint_p]),
    "mesh_endpoint_failures": (c_uint32, [endpoint_p]),
    "mesh_endpoint_rtt": (c_double, [endpoint_p, c_uint64]),
    "mesh_endpoint_cost": (c_double, [endpoint_p, c_uint64]),
    "mesh_endpoint_retry_at": (c_uint64, [endpoint_p]),
    # identity.h: names
    "mesh_identity_new": (c_int, [ctx_p, c_char_p, c_char_p, c_char_p, c_char_p, why_p,
                                  POINTER(identity_p)]),
    "mesh_identity_parse": (c_int, [ctx_p, c_char_p, c_char_p, why_p, POINTER(identity_p)]),
    "mesh_identity_free": (None, [identity_p]),
    "mesh_identity_ns": (c_char_p, [identity_p]),
    "mesh_identity_sa": (c_char_p, [identity_p]),
    "mesh_identity_cp_ns": (c_char_p, [identity_p]),
    "mesh_identity_trust_domain": (c_char_p, [identity_p]),
    "mesh_identity_dns": (c_char_p, [identity_p]),
    "mesh_identity_uri": (c_char_p, [identity_p]),
    "mesh_identity_equal": (c_int, [identity_p, identity_p]),
    "mesh_identity_match": (c_int, [identity_p, c_char_p, why_p]),
    # identity.h: renewal schedule
    "mesh_identity_renew_at": (c_uint64, [c_uint64, c_uint64, c_uint64]),
    "mesh_identity_retry_delay_ms": (c_uint64, [c_uint32, c_uint64, c_uint64, c_uint32]),
    # identity.h: keys
    "mesh_key_generate": (c_int, [ctx_p, POINTER(key_p)]),
    "mesh_key_parse": (c_int, [ctx_p, c_char_p, c_size_t, why_p, POINTER(key_p)]),
    "mesh_key_free": (None, [key_p]),
    "mesh_key_pem": (c_char_p, [key_p]),
    "mesh_key_public_pem": (c_char_p, [key_p]),
    "mesh_key_id": (c_char_p, [key_p]),
    # identity.h: CSRs
    "mesh_csr_new": (c_int, [key_p, identity_p, POINTER(csr_p)]),
    "mesh_csr_parse": (c_int, [ctx_p, c_char_p, c_size_t, why_p, POINTER(csr_p)]),
    "mesh_csr_free": (None, [csr_p]),
    "mesh_csr_pem": (c_char_p, [csr_p]),
    "mesh_csr_der": (POINTER(c_uint8), [csr_p, POINTER(c_size_t)]),
    "mesh_csr_identity": (c_int, [csr_p, why_p, POINTER(identity_p)]),
    "mesh_csr_verify": (c_int, [csr_p, identity_p, why_p]),
    # identity.h: certificates
    "mesh_certs_parse": (c_int, [ctx_p, c_char_p, c_size_t, why_p, POINTER(certs_p)]),
    "mesh_certs_free": (None, [certs_p]),
    "mesh_certs_count": (c_size_t, [certs_p]),
    "mesh_certs_pem": (c_char_p, [certs_p, c_size_t]),
    "mesh_certs_bundle_pem": (c_char_p, [certs_p, c_size_t]),
    "mesh_certs_subject": (c_char_p, [certs_p, c_size_t]),
    "mesh_certs_issuer": (c_char_p, [certs_p, c_size_t]),
    "mesh_certs_serial": (c_char_p, [certs_p, c_size_t]),
    "mesh_certs_not_before": (c_uint64, [certs_p, c_size_t]),
    "mesh_certs_not_after": (c_uint64, [certs_p, c_size_t]),
    "mesh_certs_is_ca": (c_int, [certs_p, c_size_t]),
    "mesh_certs_pathlen": (c_int32, [certs_p, c_size_t]),
    "mesh_certs_san_count": (c_size_t, [certs_p, c_size_t]),
    "mesh_certs_san_type": (c_int, [certs_p, c_size_t, c_size_t]),
    "mesh_certs_san_value": (c_char_p, [certs_p, c_size_t, c_size_t]),
    "mesh_certs_identity": (c_int, [certs_p, c_size_t, why_p, POINTER(identity_p)]),
    "mesh_certs_verify": (c_int, [certs_p, certs_p, c_uint64, why_p]),
    "mesh_certs_verify_peer": (c_int, [certs_p, certs_p, c_uint64, identity_p, why_p,
                                       POINTER(identity_p)]),
    # identity.h: certificate authority
    "mesh_ca_new": (c_int, [ctx_p, c_char_p, c_size_t, c_char_p, c_size_t, why_p,
                            POINTER(ca_p)]),
    "mesh_ca_new_root": (c_int, [ctx_p, c_char_p, c_uint64, c_uint64, POINTER(ca_p)]),
    "mesh_ca_new_issuer": (c_int, [ca_p, c_char_p, c_uint64, c_uint64, POINTER(ca_p)]),
    "mesh_ca_init": (c_int, [ctx_p, c_char_p, c_char_p, c_uint64, c_uint64, POINTER(ca_p),
                             POINTER(ca_p)]),
    "mesh_ca_free": (None, [ca_p]),
    # Borrowed from the CA: Python copies them (see identity.CA.certs).
    "mesh_ca_certs": (certs_p, [ca_p]),
    "mesh_ca_key": (key_p, [ca_p]),
    "mesh_ca_set_lifetime": (c_int, [ca_p, c_uint64]),
    "mesh_ca_set_clock_skew": (c_int, [ca_p, c_uint64]),
    "mesh_ca_issue": (c_int, [ca_p, csr_p, identity_p, c_uint64, why_p, POINTER(certs_p)]),
    # identity.h: tokens (buf is a ctypes char array of cap bytes)
    "mesh_token_mint": (c_int, [key_p, c_char_p, c_char_p, c_char_p, c_uint64, c_uint64,
                                c_char_p, c_size_t, POINTER(c_size_t)]),
    "mesh_token_verify": (c_int, [key_p, c_char_p, c_size_t, c_char_p, c_uint64, identity_p,
                                  why_p]),
    # certify.h (the char ** answers are c_void_p so that Python can hand them to
    # mesh_free_string after copying them)
    "mesh_certify_handle": (c_int, [ca_p, key_p, c_char_p, c_char_p, c_char_p, c_char_p, c_size_t,
                                    c_uint64, POINTER(c_void_p), why_p, why_p]),
    "mesh_certify_request": (c_int, [key_p, identity_p, c_char_p, POINTER(c_void_p)]),
    "mesh_certify_response_parse": (c_int, [ctx_p, c_char_p, c_size_t, POINTER(certs_p),
                                            POINTER(c_uint64), why_p]),
    # metrics.h (render's char ** is c_void_p: Python copies it, then frees it)
    "mesh_metrics_new": (c_int, [ctx_p, POINTER(metrics_p)]),
    "mesh_metrics_free": (None, [metrics_p]),
    "mesh_metrics_counter": (c_int, [metrics_p, c_char_p, c_char_p, POINTER(c_char_p), c_size_t,
                                     POINTER(family_p)]),
    "mesh_metrics_gauge": (c_int, [metrics_p, c_char_p, c_char_p, POINTER(c_char_p), c_size_t,
                                   POINTER(family_p)]),
    "mesh_metrics_histogram": (c_int, [metrics_p, c_char_p, c_char_p, POINTER(c_char_p), c_size_t,
                                       POINTER(c_uint64), c_size_t, POINTER(family_p)]),
    "mesh_metrics_latency_bounds": (POINTER(c_uint64), [POINTER(c_size_t)]),
    "mesh_metrics_family_set_max_series": (c_int, [family_p, c_size_t]),
    "mesh_metrics_family_series_count": (c_size_t, [family_p]),
    "mesh_metrics_family_type": (c_int, [family_p]),
    "mesh_metrics_family_name": (c_char_p, [family_p]),
    "mesh_metrics_series": (c_int, [family_p, POINTER(c_char_p), c_size_t, POINTER(series_p)]),
    "mesh_metrics_series_ref": (series_p, [series_p]),
    "mesh_metrics_series_unref": (None, [series_p]),
    "mesh_metrics_series_remove": (c_int, [series_p]),
    "mesh_metrics_inc": (c_int, [series_p, c_uint64]),
    "mesh_metrics_dec": (c_int, [series_p, c_uint64]),
    "mesh_metrics_set": (c_int, [series_p, c_int64]),
    "mesh_metrics_set_double": (c_int, [series_p, c_double]),
    "mesh_metrics_observe": (c_int, [series_p, c_uint64]),
    "mesh_metrics_count": (c_uint64, [series_p]),
    "mesh_metrics_value": (c_double, [series_p]),
    "mesh_metrics_sum": (c_uint64, [series_p]),
    "mesh_metrics_bucket": (c_uint64, [series_p, c_size_t]),
    "mesh_metrics_render": (c_int, [metrics_p, POINTER(c_void_p), POINTER(c_size_t)]),
    "mesh_metrics_process": (c_int, [metrics_p]),
}


def _candidates(tried):
    """Where to look, in order, with a label for the error message."""
    env = os.environ.get("MESH_LIBRARY")
    if env:
        # An explicit choice is final: falling back to another copy would
        # hide the mistake.
        return [(env, "MESH_LIBRARY")]
    out = []
    found = ctypes.util.find_library("mesh")
    if found:
        out.append((found, "ctypes.util.find_library('mesh')"))
    else:
        tried.append("  ctypes.util.find_library('mesh'): found nothing")
    if found != SONAME:
        out.append((SONAME, "the dynamic loader's search path"))
    return out


def _load():
    tried = []
    for name, how in _candidates(tried):
        try:
            cdll = ctypes.CDLL(name)
        except OSError as e:
            tried.append("  %s (%s): %s" % (name, how, e))
            continue
        if not hasattr(cdll, "mesh_version_num"):
            # find_library('mesh') can name some other project's libmesh.
            tried.append("  %s (%s): not libmesh (no mesh_version_num)" % (name, how))
            continue
        return cdll, name
    raise ImportError(
        "libmesh shared library not found; tried:\n%s\n"
        "Set MESH_LIBRARY to the full path of libmesh.so "
        "(e.g. <builddir>/libmesh/libmesh.so), or install libmesh where the "
        "dynamic loader finds it (ldconfig, LD_LIBRARY_PATH)." % "\n".join(tried),
        name="mesh")


def _declare(cdll, path):
    missing = []
    for fname, (restype, argtypes) in _PROTOTYPES.items():
        try:
            fn = getattr(cdll, fname)
        except AttributeError:
            missing.append(fname)
            continue
        fn.restype = restype
        fn.argtypes = argtypes
    if missing:
        raise ImportError("%s lacks %d libmesh function(s): %s (too old a library?)"
                          % (path, len(missing), ", ".join(missing)), name="mesh", path=path)


lib, path = _load()
_declare(lib, path)
