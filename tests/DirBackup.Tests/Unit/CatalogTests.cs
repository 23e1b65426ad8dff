using DirBackup.Api;
using DirBackup.Errors;
using DirBackup.Protocol;
using DirBackup.Rpc;
using DirBackup.Store;
using Xunit;

namespace DirBackup.Tests.Unit;

public class CatalogTests
{
    private static MethodTable DaemonMethods() => MethodTable.From(
        new SessionApi("0", "1.0"), new StorageApi(new StoreSettings()), new ProviderApi(new StoreSettings(), new DirBackup.Backup.BackupSettings(), new DirBackup.Backup.BackupSessions(), new DirBackup.Restore.RestoreSessions("/nonexistent")));

    [Fact]
    public void Daemon_implements_exactly_the_catalogue_methods()
    {
        var daemon = DaemonMethods().Handlers.Keys.ToHashSet();
        var catalogue = Catalog.Shared.Methods.Keys.ToHashSet();
        Assert.Empty(catalogue.Except(daemon));
        Assert.Empty(daemon.Except(catalogue));
    }

    [Fact]
    public void Error_codes_match_the_catalogue_by_name_and_number()
    {
        var daemon = Enum.GetValues<ErrorCode>().ToDictionary(c => c.Name(), c => (int)c);
        Assert.Equal(Catalog.Shared.Errors.OrderBy(e => e.Key), daemon.OrderBy(e => e.Key));
    }

    [Fact]
    public void Every_catalogue_method_has_a_known_side_and_parameter_types()
    {
        foreach (var method in Catalog.Shared.Methods.Values)
        {
            Assert.Contains(method.Side, new[] { "session", "storage", "provider" });
        }
        Assert.True(Catalog.Shared.Methods["backup_vm"].Params["guest-config"].Kind == ParamKind.Bytes);
    }

    [Fact]
    public void Storage_and_provider_methods_carry_the_storage_context()
    {
        foreach (var method in Catalog.Shared.Methods.Values.Where(m => m.Side == "provider"))
        {
            Assert.True(method.Params.ContainsKey("storeid") && method.Params.ContainsKey("scfg"), method.Name);
        }
    }
}
