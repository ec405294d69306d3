-- Argo CD health of a Raylight TrainingJob or TuneSweep, from its conditions.
-- Install it for both kinds (see argocd.yaml): resource.customizations.health.raylight.dev_TuneSweep
-- and ..._TrainingJob in the argocd-cm ConfigMap.
local hs = {status = "Progressing", message = "waiting for the operator"}
if obj.status == nil then
  return hs
end
if obj.status.observedGeneration ~= nil and obj.metadata.generation ~= nil
    and obj.status.observedGeneration < obj.metadata.generation then
  hs.message = "the operator has not seen the latest spec yet"
  return hs
end
local verdicts = {Failed = "Degraded", Succeeded = "Healthy", Suspended = "Suspended", Running = "Progressing"}
for _, name in ipairs({"Failed", "Succeeded", "Suspended", "Running"}) do
  for _, condition in ipairs(obj.status.conditions or {}) do
    if condition.type == name and condition.status == "True" then
      hs.status = verdicts[name]
      hs.message = condition.message or ""
      if obj.status.progress ~= nil then
        hs.message = hs.message .. " (trials " .. obj.status.progress .. ")"
      end
      return hs
    end
  end
end
hs.message = "phase " .. (obj.status.phase or "Pending") .. ": waiting for the Ray cluster"
return hs
