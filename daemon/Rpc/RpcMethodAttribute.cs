namespace DirBackup.Rpc;

/// <summary>Marks a handler as the implementation of one catalogue method: <c>Task&lt;object?&gt; M(RpcArgs, CallContext)</c>.</summary>
[AttributeUsage(AttributeTargets.Method, AllowMultiple = false)]
public sealed class RpcMethodAttribute(string name) : Attribute
{
    public string Name { get; } = name;
}

public delegate Task<object?> RpcHandler(RpcArgs args, CallContext context);
