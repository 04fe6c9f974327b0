// A realistic session of Stigg's official Node SDK against a sidecar, defaults except the URLs:
// node node_session.js http://127.0.0.1:PORT
// Prints one JSON line per step; exits non-zero on the first failed expectation.
'use strict';

const assert = require('assert');
const { Stigg } = require('@stigg/node-server-sdk');

const base = process.argv[2];
const steps = [];

function step(name, detail) {
  steps.push(name);
  console.log(JSON.stringify({ step: name, ...detail }));
}

async function eventually(read, accept, seconds) {
  const deadline = Date.now() + seconds * 1000;
  let value = await read();
  while (!accept(value) && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 50));
    value = await read();
  }
  return value;
}

async function main() {
  const apiErrors = [];
  const stigg = Stigg.initialize({ apiKey: 'app-own-key-never-forwarded', baseUri: base, baseEdgeUri: base });
  stigg.addListener('networkRequestFailed', (e) => apiErrors.push(e.errorMessage));
  await stigg.waitForInitialization();
  step('initialize');

  const customerId = `node-${process.pid}-${Date.now()}`;
  await stigg.provisionCustomer({ customerId, name: 'Node SDK', email: 'node@example.com' });
  const sub = await stigg.provisionSubscription({ customerId, planId: 'plan-pro' });
  assert.equal(sub.provisionStatus, 'SUCCESS');
  const subscriptionId = sub.subscription.id;
  step('provision', { subscriptionId });

  const sso = await stigg.getBooleanEntitlement({ customerId, featureId: 'feature-sso' });
  assert.equal(sso.hasAccess, true, JSON.stringify(sso));
  assert.equal(sso.isFallback, false);
  const projects = await stigg.getNumericEntitlement({ customerId, featureId: 'feature-max-projects' });
  assert.equal(projects.hasAccess, true);
  assert.equal(projects.isFallback, false);
  assert.ok(projects.value > 0, JSON.stringify(projects));
  const calls = await stigg.getMeteredEntitlement({ customerId, featureId: 'feature-api-calls' });
  assert.equal(calls.hasAccess, true);
  assert.equal(calls.isFallback, false);
  assert.equal(calls.currentUsage, 0);
  const region = await stigg.getEnumEntitlement({ customerId, featureId: 'feature-region' });
  assert.equal(region.isFallback, false);
  assert.ok(region.enumValues.length > 0, JSON.stringify(region));
  step('checks', { numeric: projects.value, limit: calls.usageLimit, enumValues: region.enumValues });

  await stigg.reportUsage({ customerId, featureId: 'feature-api-calls', value: 7 });
  const after = await eventually(
    () => stigg.getMeteredEntitlement({ customerId, featureId: 'feature-api-calls' }),
    (e) => e.currentUsage === 7,
    2,
  );
  assert.equal(after.currentUsage, 7, JSON.stringify(after));
  assert.equal(after.isFallback, false);
  step('usage', { currentUsage: after.currentUsage });

  const active = await stigg.getActiveSubscriptionsList({ customerId });
  assert.deepEqual(active.map((s) => s.subscriptionId), [subscriptionId]);
  const paywall = await stigg.getPaywall();
  assert.ok(paywall.plans.length > 0);
  step('reads', { plans: paywall.plans.length });

  // Realtime: a promotional grant reaches the SDK's cache within a second.
  const before = await stigg.getBooleanEntitlement({ customerId, featureId: 'feature-sso' });
  assert.equal(before.hasAccess, true);
  const seen = new Promise((resolve) => {
    stigg.addListener('entitlementsUpdated', (update) => {
      if (update.customerId === customerId) resolve(Date.now());
    });
  });
  const granted = Date.now();
  await stigg.grantPromotionalEntitlements({
    customerId,
    promotionalEntitlements: [
      { featureId: 'feature-storage-gb', period: 'ONE_MONTH', usageLimit: 9999, hasSoftLimit: false },
    ],
  });
  const arrived = await Promise.race([seen, new Promise((r) => setTimeout(() => r(null), 1000))]);
  assert.ok(arrived !== null, 'no entitlementsUpdated within 1 s of the grant');
  const storage = await stigg.getMeteredEntitlement({ customerId, featureId: 'feature-storage-gb' });
  assert.equal(storage.usageLimit, 9999, JSON.stringify(storage));
  assert.equal(storage.isFallback, false);
  step('realtime', { latencyMs: arrived - granted });

  await stigg.cancelSubscription({ subscriptionId });
  const cancelled = await eventually(
    () => stigg.getBooleanEntitlement({ customerId, featureId: 'feature-sso' }),
    (e) => e.hasAccess === false,
    2,
  );
  assert.equal(cancelled.hasAccess, false, JSON.stringify(cancelled));
  assert.equal(cancelled.isFallback, false);
  step('cancel', { accessDeniedReason: cancelled.accessDeniedReason });

  assert.deepEqual(apiErrors, []);
  stigg.close();
  console.log(JSON.stringify({ done: steps }));
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(err && err.stack ? err.stack : err);
    process.exit(1);
  },
);
