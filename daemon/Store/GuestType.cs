namespace DirBackup.Store;

public enum GuestType
{
    Qemu,
    Lxc,
}

public static class GuestTypes
{
    public static string Name(this GuestType type) => type == GuestType.Qemu ? "qemu" : "lxc";

    public static bool TryParse(string? text, out GuestType type)
    {
        switch (text)
        {
            case "qemu":
                type = GuestType.Qemu;
                return true;
            case "lxc":
                type = GuestType.Lxc;
                return true;
            default:
                type = default;
                return false;
        }
    }
}
