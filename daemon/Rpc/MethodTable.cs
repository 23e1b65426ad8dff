using System.Collections.Frozen;
using System.Reflection;

namespace DirBackup.Rpc;

/// <summary>Every catalogue method and its handler, collected once from the handler objects' attributes.</summary>
public sealed class MethodTable
{
    private MethodTable(FrozenDictionary<string, RpcHandler> handlers) => Handlers = handlers;

    public FrozenDictionary<string, RpcHandler> Handlers { get; }

    public static MethodTable From(params object[] handlerObjects)
    {
        var handlers = new Dictionary<string, RpcHandler>();
        foreach (var target in handlerObjects)
        {
            foreach (var method in target.GetType().GetMethods(BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic))
            {
                var attribute = method.GetCustomAttribute<RpcMethodAttribute>();
                if (attribute is null)
                {
                    continue;
                }
                var handler = (RpcHandler)Delegate.CreateDelegate(typeof(RpcHandler), target, method);
                if (!handlers.TryAdd(attribute.Name, handler))
                {
                    throw new InvalidOperationException($"two handlers for '{attribute.Name}'");
                }
            }
        }
        return new MethodTable(handlers.ToFrozenDictionary());
    }
}
