-- Argo CD health check for dsr.operators.dev kinds (DsrService; any kind of this group with kstatus
-- conditions Ready / Reconciling / Stalled and status.observedGeneration, such as DsrVipPool).
-- Install under resource.customizations.health.dsr.operators.dev_DsrService in argocd-cm (README,
-- "Operations"). Lua 5.1, as Argo CD's interpreter (gopher-lua) runs it.
local hs = {}
if obj.status == nil or obj.status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report a status"
  return hs
end
local generation = obj.metadata and obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end
local found = {}
for _, condition in ipairs(obj.status.conditions) do
  found[condition.type] = condition
end
local function describe(condition)
  local text = condition.reason or ""
  if condition.message ~= nil and condition.message ~= "" then
    text = text .. ": " .. condition.message
  end
  return text
end
if found.Stalled ~= nil and found.Stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(found.Stalled)
  return hs
end
if found.Reconciling ~= nil and found.Reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = describe(found.Reconciling)
  return hs
end
if found.Ready ~= nil and found.Ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(found.Ready)
  return hs
end
if found.Ready ~= nil then
  hs.status = "Degraded"
  hs.message = describe(found.Ready)
  return hs
end
hs.status = "Progressing"
hs.message = "Waiting for the Ready condition"
return hs
