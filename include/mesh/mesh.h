/* libmesh: the whole public API. Include this one header. */
#ifndef MESH_MESH_H
#define MESH_MESH_H

#include <mesh/version.h>
#include <mesh/common.h>
#include <mesh/error.h>
#include <mesh/ctx.h>
#include <mesh/diag.h>
#include <mesh/manifest.h>
#include <mesh/profile.h>
#include <mesh/policy.h>
#include <mesh/split.h>
#include <mesh/retry.h>
#include <mesh/balance.h>
#include <mesh/identity.h>
#include <mesh/certify.h>
#include <mesh/tls.h>
#include <mesh/metrics.h>
#include <mesh/rpc.h>
#include <mesh/store.h>
#include <mesh/proxy.h>

#endif
