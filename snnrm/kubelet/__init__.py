"""The kubelet side of snnrm: device plugin gRPC servers, registration, CDI specs and a kubelet stand-in."""
